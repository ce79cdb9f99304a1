// records.js: the records console, served at /records (role: records).
// Everything shown comes from /api/retention/... and /api/audit; every value is put
// in the page as text, never as HTML.

import { $, api, el, errorText, roleHome } from '/static/staff.js';

let criteria = {};       // name -> question (National Retention Assessment Criteria)
let current = null;      // the item shown
let dueCursor = null;

// ---- helpers -------------------------------------------------------------

function cells(values) {
  const tr = el('tr');
  for (const v of values) tr.append(v instanceof Node ? wrap(v) : el('td', v ?? '–'));
  return tr;
}

function wrap(node) {
  const td = el('td');
  td.append(node);
  return td;
}

const fmt = (iso) => (iso ? new Date(iso).toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' }) : '–');
const fmtDay = (iso) => (iso ? new Date(iso).toLocaleDateString([], { dateStyle: 'medium' }) : '–');
const short = (id) => (id ? `${id.slice(0, 8)}…` : '–');

function itemLink(id, text) {
  const b = el('button', text || short(id));
  b.type = 'button';
  b.className = 'mono';
  b.setAttribute('aria-label', `Open item ${id}`);
  b.addEventListener('click', () => showItem(id));
  return b;
}

/** Ask for confirmation in a dialog; resolves true when confirmed. */
function ask(dialog) {
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
  });
}

// ---- sign in and out -----------------------------------------------------

roleHome({
  roles: ['records'],
  refused: 'The records console is for records staff. Your role may not use it.',
  async onSignedIn() {
    const r = await api('GET', '/api/retention/classes');
    if (r.ok) criteria = r.data.criteria;
    renderCriteria();
    loadDue();
  },
  onSignedOut() {
    current = null;
    $('item').hidden = true;
  },
});

// ---- tabs ------------------------------------------------------------------

for (const b of document.querySelectorAll('[data-tab]')) {
  b.addEventListener('click', () => {
    for (const other of document.querySelectorAll('[data-tab]')) {
      const on = other === b;
      other.setAttribute('aria-pressed', String(on));
      $(`t-${other.dataset.tab}`).hidden = !on;
    }
    if (b.dataset.tab === 'due') loadDue();
    if (b.dataset.tab === 'certs') loadCertificates();
    if (b.dataset.tab === 'holds') loadHolds();
  });
}

// ---- the due list ----------------------------------------------------------

function beforeParam() {
  const v = $('due-before').value;
  return v ? `before=${encodeURIComponent(v)}` : '';
}

async function loadDue(more = false) {
  if (!more) dueCursor = null;
  const params = [beforeParam(), dueCursor ? `cursor=${encodeURIComponent(dueCursor)}` : ''].filter(Boolean).join('&');
  const r = await api('GET', `/api/retention/due${params ? `?${params}` : ''}`);
  $('due-error').textContent = r.ok ? '' : errorText(r, 'Could not load the due list.');
  if (!r.ok) return;
  const rows = r.data.items.map((d) => {
    const state = d.held ? el('span', 'held (legal hold)', 'held') : el('span', d.state);
    return cells([fmtDay(d.due_at), d.action, d.rule, el('span', `${d.kind} ${short(d.item_id)}`, 'mono'),
      d.cad_ref, state, itemLink(d.item_id, 'Open')]);
  });
  if (more) $('due-body').append(...rows); else $('due-body').replaceChildren(...rows);
  dueCursor = r.data.next_cursor;
  $('due-more').hidden = !dueCursor;
  const shown = $('due-body').children.length;
  $('due-summary').textContent = shown ? `${shown}${dueCursor ? '+' : ''} item(s) due.` : 'Nothing is due.';
  $('csv').href = `/api/retention/schedule.csv${beforeParam() ? `?${beforeParam()}` : ''}`;
}

$('due-form').addEventListener('submit', (e) => { e.preventDefault(); loadDue(); });
$('due-more').addEventListener('click', () => loadDue(true));

$('dispose-due').addEventListener('click', async () => {
  const dry = await api('POST', '/api/retention/dispose', { due: true });
  if (!dry.ok) return void ($('due-error').textContent = errorText(dry, 'Could not list what is due.'));
  const n = dry.data.candidates.length;
  if (!n) {
    $('due-summary').textContent = `Nothing is due for disposal${dry.data.held ? ` (${dry.data.held} held)` : ''}.`;
    return;
  }
  $('confirm-text').textContent = `${n} item(s) are due for disposal and not held` +
    `${dry.data.held ? `; ${dry.data.held} more are held and stay` : ''}.`;
  if (!(await ask($('confirm')))) return;
  const done = await api('POST', '/api/retention/dispose', { due: true, execute: true });
  if (!done.ok) return void ($('due-error').textContent = errorText(done, 'Disposal failed.'));
  const waiting = Object.keys(done.data.waiting).length;
  const failed = Object.keys(done.data.failed).length;
  $('due-summary').textContent = `${done.data.disposed.length} disposed (certificates kept), ${waiting} waiting ` +
    `for a store lock, ${failed} failed (retried automatically).`;
  loadDue();
});

// ---- finding ---------------------------------------------------------------

$('find-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const id = $('find-id').value.trim();
  $('find-error').textContent = '';
  $('consultation').hidden = true;
  const item = await api('GET', `/api/retention/items/${encodeURIComponent(id)}`);
  if (item.ok) return void renderItem(item.data);
  const c = await api('GET', `/api/retention/consultations/${encodeURIComponent(id)}/items`);
  if (!c.ok) return void ($('find-error').textContent = 'No evidence item or consultation has that id.');
  $('c-ref').textContent = c.data.items[0]?.cad_ref || id;
  $('c-class').textContent = `${c.data.consultation.class || 'none'}${c.data.consultation.set ? '' : ' (default)'}` +
    ` — ${c.data.consultation.label}`;
  $('c-items').replaceChildren(...c.data.items.map((d) => cells([itemLink(d.item_id), d.kind, d.rule,
    `${d.action} ${fmtDay(d.due_at)}`, d.held ? 'held' : d.state])));
  $('consultation').hidden = false;
});

// ---- legal holds -----------------------------------------------------------

async function loadHolds() {
  const r = await api('GET', '/api/retention/holds');
  $('holds-error').textContent = r.ok ? '' : errorText(r, 'Could not load the holds.');
  if (!r.ok) return;
  $('holds-body').replaceChildren(...r.data.holds.map((h) => {
    const open = h.scope === 'item' ? itemLink(h.target, 'Open') : findButton(h.target);
    return cells([fmt(h.placed_at), `${h.scope} ${short(h.target)}`, h.placed_by, h.reason, open]);
  }));
}

function findButton(id) {
  const b = el('button', 'Show items');
  b.type = 'button';
  b.addEventListener('click', () => {
    $('find-id').value = id;
    document.querySelector('[data-tab="find"]').click();
    $('find-form').requestSubmit();
  });
  return b;
}

// ---- certificates ----------------------------------------------------------

async function loadCertificates() {
  const r = await api('GET', '/api/retention/certificates?limit=200');
  $('certs-error').textContent = r.ok ? '' : errorText(r, 'Could not load certificates.');
  if (!r.ok) return;
  $('certs-body').replaceChildren(...r.data.certificates.map((c) => cells([
    fmt(c.disposed_at), itemLink(c.item_id), c.certificate.rule, c.certificate.disposed_by.name,
    el('span', c.certificate.item.sha256 || '–', 'mono')])));
}

// ---- an item ---------------------------------------------------------------

async function showItem(id) {
  const r = await api('GET', `/api/retention/items/${encodeURIComponent(id)}`);
  if (!r.ok) return void ($('find-error').textContent = errorText(r, 'Could not load the item.'));
  renderItem(r.data);
}

function fact(dl, name, value, mono) {
  dl.append(el('dt', name), el('dd', value ?? '–', mono ? 'mono' : null));
}

function renderItem(d) {
  current = d;
  $('i-id').textContent = d.item_id;
  const dl = $('i-facts');
  dl.replaceChildren();
  fact(dl, 'Kind', d.kind + (d.classification ? ` (${d.classification.replace('_', '-')})` : ''));
  fact(dl, 'Consultation', `${d.cad_ref} (${d.consultation_id})`);
  fact(dl, 'Created', fmt(d.created_at));
  fact(dl, 'Size', `${d.size} bytes`);
  fact(dl, 'SHA-256', d.sha256, true);
  fact(dl, 'Store prefix', d.prefix, true);
  fact(dl, 'Retention class', d.rule_label);
  fact(dl, 'Next', d.due_at ? `${d.action} on ${fmtDay(d.due_at)}` : 'nothing scheduled');
  fact(dl, 'State', d.held ? `${d.state}, under a legal hold` : d.state);

  $('i-objects').replaceChildren(...(d.objects.length ? d.objects.map((key) => {
    const li = el('li');
    const b = el('button', 'Open…');
    b.type = 'button';
    b.addEventListener('click', () => openContent(key));
    li.append(el('span', key, 'mono'), b);
    return li;
  }) : [el('li', d.state === 'disposed' ? 'None: the content was disposed of.' : 'None stored.')]));

  $('i-cert').hidden = !d.certificate;
  $('i-cert-body').textContent = d.certificate
    ? JSON.stringify({ ...d.certificate.certificate, signature: d.certificate.signature,
      key_fingerprint: d.certificate.key_fingerprint }, null, 2)
    : '';
  const live = d.state !== 'disposed';
  $('i-actions').hidden = !live;
  $('dispose-one').disabled = !d.disposable;
  $('dispose-state').textContent = d.held ? 'A legal hold stops disposal until it is released.'
    : d.disposable ? 'Due for disposal now.' : 'Not due for disposal: a review decides first.';

  $('i-reviews').replaceChildren(...d.reviews.map((v) => cells([fmt(v.at), v.reviewer, v.decision,
    v.criteria.join(', ') || 'none', v.reason, fmtDay(v.next_review_at)])));
  $('i-holds').replaceChildren(...d.holds.map((h) => cells([fmt(h.placed_at), h.scope, h.placed_by, h.reason,
    h.released_at ? `${fmt(h.released_at)} by ${h.released_by}: ${h.release_reason}` : 'active'])));
  $('i-audit').replaceChildren(...d.audit.map((a) => cells([fmt(a.at), `${a.actor} (${a.role})`, a.action,
    a.reason, a.client])));
  for (const id of ['review-error', 'hold-error', 'dispose-error']) $(id).textContent = '';
  $('item').hidden = false;
  $('item-h').focus();
}

function renderCriteria() {
  $('criteria').replaceChildren(...Object.entries(criteria).map(([name, question]) => {
    const label = el('label', null, 'criterion');
    const box = el('input');
    box.type = 'checkbox';
    box.name = 'criteria';
    box.value = name;
    label.append(box, el('span', question));
    return label;
  }));
}

$('review-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = e.target;
  const body = {
    id: current.item_id,
    decision: f.elements.decision.value,
    reason: f.elements.reason.value,
    criteria: [...f.querySelectorAll('input[name=criteria]:checked')].map((b) => b.value),
  };
  if (f.elements.next_review.value) body.next_review = f.elements.next_review.value;
  const r = await api('POST', '/api/retention/review', body);
  if (!r.ok) return void ($('review-error').textContent = errorText(r, 'Could not record the review.'));
  f.reset();
  showItem(current.item_id);
  loadDue();
});

$('hold-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const op = e.submitter?.value || 'hold';
  const id = op.endsWith('consultation') ? current.consultation_id : current.item_id;
  const path = op.startsWith('hold') ? '/api/retention/hold' : '/api/retention/release';
  const r = await api('POST', path, { id, reason: $('hold-reason').value });
  if (!r.ok) return void ($('hold-error').textContent = errorText(r, 'Could not change the hold.'));
  e.target.reset();
  showItem(current.item_id);
  loadDue();
});

$('dispose-one').addEventListener('click', async () => {
  $('confirm-text').textContent = `Dispose of ${current.kind} ${current.item_id} (${current.rule}, ` +
    `SHA-256 ${current.sha256 || 'unknown'})?`;
  if (!(await ask($('confirm')))) return;
  const r = await api('POST', '/api/retention/dispose', { ids: [current.item_id], execute: true });
  if (!r.ok) return void ($('dispose-error').textContent = errorText(r, 'Disposal failed.'));
  if (Object.keys(r.data.waiting).length) $('dispose-error').textContent = 'A store lock keeps it for now; it is disposed of when the lock expires.';
  showItem(current.item_id);
  loadDue();
});

async function openContent(key) {
  $('open-key').textContent = key;
  $('open-reason').value = '';
  if (!(await ask($('open')))) return;
  const reason = $('open-reason').value.trim();
  if (!reason) return void ($('dispose-error').textContent = 'A reason is needed to open content.');
  const url = `/api/retention/items/${encodeURIComponent(current.item_id)}/content?key=${encodeURIComponent(key)}` +
    `&reason=${encodeURIComponent(reason)}`;
  const a = el('a');
  a.href = url;
  a.download = key.split('/').pop();
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => showItem(current.item_id), 1000); // the trail now shows the opening
}
