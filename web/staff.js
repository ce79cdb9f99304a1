// staff.js: what the staff pages (the officer's console, the records console) share:
// DOM helpers, the JSON API client that sends the session cookie and, on changes,
// the CSRF token, and signing in and out. The token lives in memory only
// (``session.csrf``).
import { $, el } from '/static/dom.js';

export { $, el } from '/static/dom.js';

/** The signed-in session: its CSRF token, and what to do when the server ends it. */
export const session = { csrf: null, onExpired: () => {} };

export const errorText = (r, fallback) => r.data?.error?.message || `${fallback} (${r.status || 'network error'})`;

/** JSON request with the session cookie and, for non-GET, the CSRF header. */
export async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && session.csrf) headers['X-CSRF-Token'] = session.csrf;
  let r;
  try {
    r = await fetch(path, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    return { ok: false, status: 0, data: null };
  }
  const data = await r.json().catch(() => null);
  if (r.status === 401 && path !== '/api/login' && session.csrf) session.onExpired();
  return { ok: r.ok, status: r.status, data };
}

/** Copy a read-only field's text (a join link) to the clipboard; say so in ``status``. */
export async function copyField(input, status) {
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    input.select();
    document.execCommand('copy');
  }
  status.textContent = 'Link copied.';
}

/**
 * What became of a link's message (``message`` of a created consultation or guest:
 * {channel, recipient, status, created_at, error}, or none), as a paragraph for the
 * officer; ``whom`` is who the link is for ("the victim", "the guest"), ``when``
 * formats a time.
 */
export function deliveryNote(m, whom, when) {
  if (!m) return el('p', `No message was sent: give ${whom} the link yourself.`);
  const to = `${m.channel === 'sms' ? 'SMS' : 'Email'} to ${m.recipient}`;
  return el('p', {
    sent: `${to}: sent ${when(m.created_at)}.`,
    outbox: `${to}: not sent automatically here. Send this message (or read the link) to ${whom} yourself.`,
    failed: `${to}: sending failed (${m.error || 'no reason given'}). Give ${whom} the link another way.`,
  }[m.status] || `${to}: ${m.status}.`, m.status === 'failed' ? 'error' : null);
}

/**
 * Signing in and out, the same on every staff page: the form #login-form (errors in
 * #login-error), the #logout button and #who. A reload stays signed in (the cookie is
 * still there: GET /api/me). ``onSignedIn(me)`` runs when a session starts,
 * ``onSignedOut()`` when it ends (signed out, or expired on the server); returns the
 * sign-out function, for a page that ends a session itself.
 */
export function signInOut({ onSignedIn, onSignedOut = () => {} }) {
  const signedIn = (me) => {
    session.csrf = me.csrf_token;
    $('who').textContent = `${me.username} (${me.role})`;
    onSignedIn(me);
  };
  const signedOut = (message = '') => {
    onSignedOut();
    session.csrf = null;
    $('who').textContent = '';
    $('login-error').textContent = message;
  };
  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = e.target;
    const r = await api('POST', '/api/login', { username: f.elements.username.value, password: f.elements.password.value });
    if (!r.ok) return void ($('login-error').textContent = errorText(r, 'Could not sign in.'));
    f.reset();
    $('login-error').textContent = '';
    signedIn(r.data);
  });
  $('logout').addEventListener('click', async () => {
    await api('POST', '/api/logout');
    signedOut();
  });
  session.onExpired = () => signedOut('Your session has ended. Please sign in again.');
  api('GET', '/api/me').then((r) => { if (r.ok) signedIn(r.data); });
  return signedOut;
}

/**
 * A staff page with a home view for some roles only: signInOut, plus what every such
 * page does. Signed in with one of ``roles``: #v-login hides, #v-home shows (its
 * heading focused), then ``onSignedIn(me)``; any other role is told ``refused`` and
 * stays on the sign-in view (with #logout, to change user). Signed out:
 * ``onSignedOut()``, then back to #v-login.
 */
export function roleHome({ roles, refused, onSignedIn, onSignedOut = () => {} }) {
  return signInOut({
    onSignedIn(me) {
      $('logout').hidden = false;
      if (!roles.includes(me.role)) {
        $('login-error').textContent = refused;
        return undefined;
      }
      $('v-login').hidden = true;
      $('v-home').hidden = false;
      $('v-home').querySelector('h1').focus();
      return onSignedIn(me);
    },
    onSignedOut() {
      onSignedOut();
      $('logout').hidden = true;
      $('v-home').hidden = true;
      $('v-login').hidden = false;
    },
  });
}
