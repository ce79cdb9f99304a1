// queue-live.js: what the EVR queue's pages share (the officers' board, /queue, and
// the sergeant's desk, /desk): the live board's socket (GET /api/queue/ws) and how
// times are written. Text only, never HTML.
import { el, session } from '/static/staff.js';

/** "45 min", "2 h 5 min", "3 d 4 h": a span of minutes, for people. */
export function fmtMinutes(total) {
  const m = Math.max(0, Math.floor(total));
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 24) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d} d ${h % 24} h` : `${d} d`;
}

export const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' }) : '–');

export const STATE_TEXT = {
  triage: 'Awaiting triage', queued: 'Queued', allocated: 'Allocated', rejected: 'Rejected',
  dispatched: 'Dispatched', in_call: 'In call', awaiting_review: 'Awaiting review', finalised: 'Finalised',
  patrol_suspect: 'To patrol: suspect', patrol_enquiries: 'To patrol: enquiries',
  evr_desk_enquiries: 'Back for desk enquiries',
};

/** A table row of text cells (or nodes). */
export function row(values, className) {
  const tr = el('tr', null, className);
  for (const v of values) {
    const td = el('td');
    if (v instanceof Node) td.append(v); else td.textContent = v ?? '–';
    tr.append(td);
  }
  return tr;
}

/** How long an incident has waited and whether it is past its grade's target, now
 * (the board's figures as pushed, moved on by the time since). */
export function waiting(i, receivedAt) {
  const since = (Date.now() - receivedAt) / 60000;
  const minutes = (i.waiting_minutes ?? 0) + since;
  const overdue = Boolean(i.overdue) || (i.target_at != null && Date.now() > new Date(i.target_at).getTime());
  return { minutes, overdue };
}

/** "Overdue" in words as well as in red: colour is never the only signal. */
export function targetCell(i, overdue) {
  if (overdue) return el('strong', 'Overdue', 'overdue');
  if (!i.target_at) return el('span', 'No target');
  return el('span', `Within target (by ${fmtTime(i.target_at)})`);
}

/**
 * The live queue: ``onQueue(incidents)`` on every push (when the socket opens and
 * after every change), ``onLink(text)`` with what to tell the user about the
 * connection. A closed socket reconnects (backing off) until ``close()``; a session
 * ended on the server (4003) signs the page out.
 */
export function liveQueue({ onQueue, onLink = () => {} }) {
  let ws = null;
  let stopped = false;
  let delay = 1000;
  let retry = null;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';

  function open() {
    ws = new WebSocket(`${scheme}//${location.host}/api/queue/ws`);
    ws.addEventListener('open', () => { delay = 1000; onLink('Live: this page updates as the queue changes.'); });
    ws.addEventListener('message', (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      if (msg.type === 'queue') onQueue(msg.incidents || []);
      if (msg.type === 'error' && msg.code === 'session_ended') stopped = true;
    });
    ws.addEventListener('close', (e) => {
      if (e.code === 4003) {
        stopped = true;
        session.onExpired();
        return;
      }
      if (stopped) return;
      onLink('Not live: reconnecting…');
      retry = setTimeout(open, delay);
      delay = Math.min(delay * 2, 30000);
    });
  }
  open();
  return {
    close() {
      stopped = true;
      clearTimeout(retry);
      if (ws && ws.readyState < WebSocket.CLOSING) ws.close(1000);
    },
  };
}

/** A field's own error (its ``aria-describedby`` ``.field-error``) goes once it is edited. */
export function clearsFieldErrors(form) {
  form.addEventListener('input', (e) => {
    for (const id of (e.target.getAttribute('aria-describedby') || '').split(' ')) {
      const p = id ? document.getElementById(id) : null;
      if (p?.classList.contains('field-error')) p.textContent = '';
    }
    e.target.removeAttribute('aria-invalid');
  });
}
