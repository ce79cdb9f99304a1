// chat.js: the chat panel of a call, the same on the victim's page (and guests')
// and on the officer's console: for spelling names, addresses and reference numbers.
// Messages from every side with who sent them and when, a box of at most 2,000
// characters with a visible count, and "N new" on the panel's button while it is
// closed. Text is only ever put on the page as text (textContent).
import { el } from '/static/dom.js';
import { clock, who } from '/static/people.js';

export const MAX_CHAT = 2000;

let panels = 0;

export class ChatPanel {
  /**
   * @param {HTMLElement} root  an empty <section>; the panel is built inside it
   * @param {{send: (text: string) => boolean, open?: boolean, hint?: string}} opts
   *   send: hands a message to the call (false when not connected)
   */
  constructor(root, { send, open = true, hint = '' }) {
    this.send = send;
    this.ids = new Set();
    this.unread = 0;
    this.lastSent = '';
    const n = (panels += 1);
    const id = (name) => `chat${n}-${name}`;
    root.classList.add('chat');

    const heading = el('h2', null, 'chat-heading');
    this.toggle = el('button', null, 'chat-toggle');
    this.toggle.type = 'button';
    this.toggle.setAttribute('aria-controls', id('body'));
    this.toggle.append(el('span', 'Messages'));
    this.badge = el('span', null, 'chat-unread');
    this.toggle.append(this.badge);
    heading.append(this.toggle);

    this.body = el('div', null, 'chat-body');
    this.body.id = id('body');
    this.empty = el('p', hint || 'No messages yet.', 'hint chat-empty');
    this.list = el('ol', null, 'chat-list');
    this.log = el('div', null, 'chat-log'); // announced as messages arrive; it scrolls
    this.log.setAttribute('role', 'log');
    this.log.setAttribute('aria-label', 'Messages in this call');
    this.log.tabIndex = 0; // reachable by keyboard, to scroll
    this.log.append(this.list);

    const form = el('form', null, 'chat-form');
    const label = el('label', 'Write a message');
    label.htmlFor = id('text');
    this.input = el('textarea');
    this.input.id = id('text');
    this.input.rows = 2;
    this.input.maxLength = MAX_CHAT;
    this.input.setAttribute('aria-describedby', `${id('count')} ${id('error')}`);
    this.count = el('p', null, 'chat-count hint');
    this.count.id = id('count');
    this.error = el('p', null, 'error');
    this.error.id = id('error');
    this.error.setAttribute('role', 'alert');
    const button = el('button', 'Send', 'primary');
    button.type = 'submit';
    form.append(label, this.input, this.count, this.error, button);
    this.body.append(this.empty, this.log, form);
    root.replaceChildren(heading, this.body);

    this.toggle.addEventListener('click', () => this.setOpen(this.body.hidden));
    this.input.addEventListener('input', () => this.counted());
    this.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
    });
    form.addEventListener('submit', (e) => { e.preventDefault(); this.submit(); });
    this.setOpen(open);
    this.counted();
  }

  setOpen(open) {
    this.body.hidden = !open;
    this.toggle.setAttribute('aria-expanded', String(open));
    if (open) this.unread = 0;
    this.badged();
  }

  badged() {
    this.badge.textContent = this.unread ? ` (${this.unread} new)` : '';
    this.toggle.classList.toggle('has-unread', this.unread > 0);
  }

  counted() {
    const used = this.input.value.length;
    this.count.textContent = `${used} of ${MAX_CHAT} characters`;
    this.count.classList.toggle('chat-count-full', used >= MAX_CHAT);
  }

  submit() {
    const text = this.input.value;
    if (!text.trim()) return this.showError('Write a message first.');
    if (text.length > MAX_CHAT) return this.showError(`A message can have at most ${MAX_CHAT} characters.`);
    if (!this.send(text)) return this.showError('Not sent: the call is not connected. Try again when it reconnects.');
    this.lastSent = text;
    this.input.value = '';
    this.showError('');
    this.counted();
    return undefined;
  }

  /** The server refused the last message (chat_too_long, chat_empty): say why, give it back. */
  refused(message) {
    if (!this.input.value && this.lastSent) this.input.value = this.lastSent;
    this.counted();
    this.setOpen(true);
    this.showError(message || 'That message was not sent.');
  }

  showError(text) { this.error.textContent = text; }

  /** A message from the server ({id, from: {role, name}, text, at}); each shown once. */
  add(m) {
    if (!m || typeof m.text !== 'string' || (m.id != null && this.ids.has(m.id))) return;
    if (m.id != null) this.ids.add(m.id);
    const item = el('li', null, 'chat-msg');
    item.dataset.role = m.from?.role || '';
    const meta = el('p', null, 'chat-meta');
    meta.append(el('strong', who(m.from)));
    const time = clock(m.at);
    if (time) {
      const t = el('time', time);
      t.dateTime = m.at;
      meta.append(' ', t);
    }
    item.append(meta, el('p', m.text, 'chat-text'));
    this.list.append(item);
    this.empty.hidden = true;
    if (this.body.hidden) { this.unread += 1; this.badged(); }
    item.scrollIntoView?.({ block: 'nearest' });
  }

  /** The transcript so far (after joining or rejoining): none counts as new. */
  addAll(messages) {
    const closed = this.body.hidden;
    for (const m of messages || []) this.add(m);
    if (closed) { this.unread = 0; this.badged(); }
  }
}
