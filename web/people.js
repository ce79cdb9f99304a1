// people.js: how the pages name the people in a call: every role's words, and a
// person as "name (role)". One home for these words, so the gallery's tiles, the chat
// and the console's lists all say the same.

export const ROLE_TEXT = {
  victim: 'Victim',
  officer: 'Officer',
  sergeant: 'Sergeant',
  carer: 'Parent or carer',
  interpreter: 'Interpreter',
  appropriate_adult: 'Appropriate adult',
  support_worker: 'Support worker',
};

/** The roles a guest may be invited as (the console's choice, the guest page's wording). */
export const GUEST_ROLES = ['carer', 'interpreter', 'appropriate_adult', 'support_worker'];

export const STAFF_ROLES = ['officer', 'sergeant'];

export const roleText = (role) => ROLE_TEXT[role] || String(role || 'Someone').replace(/_/g, ' ');

/** "Ana Silva (Interpreter)", or the role alone when there is no name. */
export function who(person) {
  const name = String(person?.name || '').trim();
  const role = roleText(person?.role);
  return name ? `${name} (${role})` : role;
}

/** A time of day as people read it here: 24-hour, British ("14:05"). */
export function clock(iso) {
  const d = iso ? new Date(iso) : null;
  if (!d || Number.isNaN(d.getTime())) return '';
  return d.toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit' });
}
