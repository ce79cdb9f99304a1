// console-guests.js: the guests of the open call on the officer's console: invite a
// parent or carer, an interpreter, an appropriate adult or a support worker (a link
// of their own, sent by SMS or email or shown once to copy), see who was invited and
// whether they are in the call, and end one guest's link without ending the call.
import { GUEST_ROLES, roleText, who } from '/static/people.js';
import { $, api, copyField, deliveryNote, el, errorText } from '/static/staff.js';

const STATUS_TEXT = {
  invited: 'invited, link not used yet',
  joined: 'joined',
  closed: 'link ended',
  expired: 'link expired',
};

const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString('en-GB', { dateStyle: 'short', timeStyle: 'short' }) : '–');

export class GuestPanel {
  constructor() {
    this.cid = null;
    this.loading = null;  // the request in flight
    this.again = false;   // another refresh asked for meanwhile
    this.ending = null;   // the guest whose link the dialog asks about
    $('g-role').replaceChildren(...GUEST_ROLES.map((role) => {
      const option = el('option', roleText(role));
      option.value = role;
      return option;
    }));
    $('guest-form').addEventListener('submit', (e) => { e.preventDefault(); this.invite(e.target); });
    $('guest-copy').addEventListener('click', () => copyField($('guest-url'), $('guest-copy-status')));
    $('confirm-guest').addEventListener('close', () => this.confirmed());
  }

  /** A call was opened: its guests. */
  open(cid) {
    this.cid = cid;
    $('guest-form').reset();
    $('guest-form').querySelectorAll('input, select, button').forEach((c) => { c.disabled = false; });
    $('guest-created').hidden = true;
    $('guest-list').replaceChildren();
    $('guests-empty').hidden = false;
    $('guests-error').textContent = '';
    $('guest-form-error').textContent = '';
    this.refresh();
  }

  /** The call is over for this window: nobody more to invite. */
  ended() {
    $('guest-form').querySelectorAll('input, select, button').forEach((c) => { c.disabled = true; });
    this.refresh();
  }

  close() { this.cid = null; }

  url(tail = '') { return `/api/consultations/${encodeURIComponent(this.cid)}/guests${tail}`; }

  /** Load the list again (on every state change: one request at a time). */
  async refresh() {
    if (!this.cid) return;
    if (this.loading) { this.again = true; return; }
    const cid = this.cid;
    this.loading = api('GET', this.url());
    const r = await this.loading;
    this.loading = null;
    if (cid === this.cid) {
      if (r.ok) this.render(r.data?.guests || []);
      else if (r.status !== 404) $('guests-error').textContent = errorText(r, 'Could not load the guests.');
    }
    if (this.again) { this.again = false; this.refresh(); }
  }

  render(list) {
    $('guests-error').textContent = '';
    $('guests-empty').hidden = list.length > 0;
    $('guest-list').replaceChildren(...list.map((g) => {
      const item = el('li', null, 'guest');
      item.dataset.status = g.status;
      const name = who(g);
      const line = el('p', null, 'guest-line');
      line.append(el('strong', name));
      if (g.language) line.append(`, ${g.language}`);
      const status = `${STATUS_TEXT[g.status] || g.status}${g.status === 'joined' ? (g.connected ? ', in the call now' : ', not in the call now') : ''}`;
      line.append(el('span', `: ${status}`, 'guest-status'));
      item.append(line);
      if (g.status === 'invited' || g.status === 'joined') {
        const end = el('button', 'End link', 'danger');
        end.type = 'button';
        end.setAttribute('aria-label', `End link for ${name}`);
        end.addEventListener('click', () => this.ask(g));
        item.append(end);
      } else if (g.closed_at) {
        item.append(el('p', `Ended ${fmtTime(g.closed_at)}`, 'hint'));
      }
      return item;
    }));
  }

  async invite(form) {
    const fd = new FormData(form);
    const say = (text) => { $('guest-form-error').textContent = text; };
    const text = (k) => String(fd.get(k) || '').trim();
    const how = fd.get('notify');
    if (how === 'sms' && !text('phone')) return say('Enter a phone number to send the link by SMS.');
    if (how === 'email' && !text('email')) return say('Enter an email address to send the link by email.');
    const body = { role: fd.get('role'), name: text('name'), language: text('language') };
    // Copying it: send nothing, so give the server no address to send to.
    if (how !== 'copy') Object.assign(body, { notify: how, phone: text('phone'), email: text('email') });
    const r = await api('POST', this.url(), body);
    if (r.status !== 201) return say(errorText(r, 'Could not invite the guest.'));
    say('');
    form.reset();
    this.created(r.data);
    this.refresh();
    return undefined;
  }

  created(g) {
    $('guest-created').hidden = false;
    $('guest-created-who').textContent = who(g);
    $('guest-url').value = g.join_url;
    $('guest-expires').textContent = fmtTime(g.expires_at);
    $('guest-copy-status').textContent = '';
    $('guest-outbox').replaceChildren(deliveryNote(g.message, 'the guest', fmtTime),
      el('p', 'EVR keeps no copy of this link: copy it before you leave this screen.', 'hint'));
    $('guest-created-h').focus();
  }

  ask(guest) {
    this.ending = guest;
    $('confirm-guest-who').textContent = who(guest);
    $('confirm-guest').returnValue = '';
    $('confirm-guest').showModal();
  }

  async confirmed() {
    const guest = this.ending;
    this.ending = null;
    if ($('confirm-guest').returnValue !== 'end' || !guest || !this.cid) return;
    const r = await api('POST', this.url(`/${encodeURIComponent(guest.id)}/close`), {});
    if (!r.ok) $('guests-error').textContent = errorText(r, 'Could not end the guest\'s link.');
    this.refresh();
  }
}
