// desk.js: the sergeant's desk, served at /desk (sergeants). Triage (queue,
// allocate to an officer who is signed in, reject with a reason), the waiting queue
// and the reviews due, overdue first, with the investigation record to review.
// The board's socket (GET /api/queue/ws) says when anything changed: the queue
// comes with it, and the triage and review lists are fetched again, so nothing
// reloads. Every value goes in as text, never as HTML.
import { $, api, el, errorText, roleHome } from '/static/staff.js';
import { clearsFieldErrors, fmtMinutes, fmtTime, liveQueue, row, STATE_TEXT, targetCell, waiting } from '/static/queue-live.js';

const OUTCOME_TEXT = {
  finalised: 'Finalised', patrol_suspect: 'Passed to patrol: suspect',
  patrol_enquiries: 'Passed to patrol: enquiries', evr_desk_enquiries: 'Back to the officer for desk enquiries',
};

const KIND_TEXT = {
  created: 'entered', queue: 'queued', allocate: 'allocated', reject: 'rejected', take: 'taken', call: 'video call started',
  arrived: 'officer arrived (joined the call)', phoned: 'victim phoned', call_closed: 'call closed',
  submit: 'investigation record submitted', review: 'reviewed', crime_outcome: 'crime outcome recorded',
};

let me = null;
let live = null;
let ticker = null;
let queue = [];
let receivedAt = 0;
let triageFor = null;  // the incident being triaged
let reviewFor = null;  // the incident being reviewed

// ---- sign in and out -----------------------------------------------------

roleHome({
  roles: ['sergeant'],
  refused: 'The desk is for sergeants. Your role may not use it.',
  onSignedIn(who) {
    me = who;
    loadLists();
    live = liveQueue({
      onQueue(list) {
        queue = list;
        receivedAt = Date.now();
        renderQueue();
        loadLists(); // the push says something changed
      },
      onLink(text) { $('live').textContent = text; },
    });
    clearInterval(ticker);
    ticker = setInterval(() => { renderQueue(); loadLists(); }, 60000); // times move on between changes
  },
  onSignedOut() {
    me = null;
    live?.close();
    live = null;
    clearInterval(ticker);
    triageFor = null;
    reviewFor = null;
    for (const id of ['triage-body', 'queue-body', 'reviews-body']) $(id).replaceChildren();
    for (const id of ['triage', 'review']) $(id).hidden = true;
    $('desk-status').textContent = '';
  },
});

// ---- helpers ---------------------------------------------------------------

function flags(i) {
  return [i.vulnerability && 'Vulnerable', i.high_harm && 'High harm'].filter(Boolean).join(', ') || '–';
}

function button(text, label, action, onClick) {
  const b = el('button', text);
  b.type = 'button';
  b.dataset.action = action;
  b.setAttribute('aria-label', label);
  b.addEventListener('click', onClick);
  return b;
}

/** Redraw ``tbody`` with ``rows``, keeping the focus on the button it was on. */
function redraw(tbody, rows) {
  const focused = document.activeElement?.dataset?.action;
  tbody.replaceChildren(...rows);
  if (focused) document.querySelector(`[data-action="${CSS.escape(focused)}"]`)?.focus();
}

function fact(dl, name, value) {
  dl.append(el('dt', name), el('dd', value == null || value === '' ? '–' : value));
}

function say(text) {
  $('desk-status').textContent = text;
}

let loading = null;
let again = false;

/** Fetch the triage and review lists again (one at a time; a change during a
 * fetch fetches once more after it). */
async function loadLists() {
  if (loading) { again = true; return; }
  loading = Promise.all([loadTriage(), loadReviews()]);
  try { await loading; } finally { loading = null; }
  if (again) { again = false; loadLists(); }
}

// ---- triage ----------------------------------------------------------------

async function loadTriage() {
  if (!me) return;
  const r = await api('GET', '/api/incidents?state=triage');
  $('triage-error').textContent = r.ok ? '' : errorText(r, 'Could not load the incidents to triage.');
  if (!r.ok) return;
  const list = r.data.incidents.sort((a, b) => String(a.reported_at).localeCompare(b.reported_at));
  redraw($('triage-body'), list.map((i) => {
    const minutes = (Date.now() - new Date(i.reported_at).getTime()) / 60000;
    const tr = row([i.cad_ref, String(i.grade), i.category || '–', fmtTime(i.reported_at), fmtMinutes(minutes),
      flags(i), i.summary || '–', button('Triage', `Triage ${i.cad_ref}`, `triage-${i.id}`, () => openTriage(i))]);
    tr.dataset.incident = i.id;
    return tr;
  }));
  $('triage-empty').hidden = list.length > 0;
  if (triageFor && !list.some((i) => i.id === triageFor.id)) closeTriage(); // triaged elsewhere
}

async function loadOfficers() {
  const select = $('t-officer');
  const chosen = select.value;
  const r = await api('GET', '/api/officers');
  if (!r.ok) {
    $('e-officer').textContent = errorText(r, 'Could not load the officers.');
    return;
  }
  $('e-officer').textContent = '';
  const on = r.data.officers.filter((o) => o.signed_in);
  const off = r.data.officers.filter((o) => !o.signed_in);
  const none = el('option', on.length ? 'Choose an officer' : 'No officer is signed in');
  none.value = '';
  const groups = [none];
  for (const [label, officers, disabled] of [['Signed in', on, false], ['Not signed in', off, true]]) {
    if (!officers.length) continue;
    const group = el('optgroup');
    group.label = label;
    for (const o of officers) {
      const option = el('option', disabled ? `${o.username} (not signed in)` : o.username);
      option.value = o.username;
      option.disabled = disabled;
      group.append(option);
    }
    groups.push(group);
  }
  select.replaceChildren(...groups);
  if (on.some((o) => o.username === chosen)) select.value = chosen;
}

function openTriage(i) {
  triageFor = i;
  $('triage-form').reset();
  for (const id of ['t-error', 'e-officer', 'e-reason']) $(id).textContent = '';
  $('t-ref').textContent = i.cad_ref;
  const dl = $('t-facts');
  dl.replaceChildren();
  fact(dl, 'Grade', String(i.grade));
  fact(dl, 'Category', i.category);
  fact(dl, 'Reported', fmtTime(i.reported_at));
  fact(dl, 'Flags', flags(i));
  fact(dl, 'Summary', i.summary);
  fact(dl, 'Entered by', `${i.created_by} (${i.created_by_role})`);
  $('triage').hidden = false;
  $('triage-form-h').focus();
  loadOfficers();
}

function closeTriage() {
  triageFor = null;
  $('triage').hidden = true;
}

$('t-cancel').addEventListener('click', closeTriage);

$('triage-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  if (!triageFor) return;
  const f = e.target.elements;
  const decision = f.decision.value;
  const body = { decision };
  const reason = f.reason.value.trim();
  if (reason) body.reason = reason;
  for (const id of ['t-error', 'e-officer', 'e-reason']) $(id).textContent = '';
  if (decision === 'allocate') {
    if (!f.officer.value) {
      $('e-officer').textContent = 'Choose an officer who is signed in.';
      $('t-error').textContent = 'Choose the officer to allocate it to.';
      return void f.officer.focus();
    }
    body.officer = f.officer.value;
  }
  if (decision === 'reject' && !reason) {
    $('e-reason').textContent = 'Give the reason for rejecting it: it is kept on the incident.';
    $('t-error').textContent = 'A rejection needs a reason.';
    return void f.reason.focus();
  }
  const i = triageFor;
  const r = await api('POST', `/api/incidents/${encodeURIComponent(i.id)}/triage`, body);
  if (!r.ok) {
    $('t-error').textContent = errorText(r, 'Could not record the decision.');
    for (const field of r.data?.error?.fields || []) {
      const p = $(`e-${field}`);
      if (p) p.textContent = r.data.error.message;
    }
    return;
  }
  closeTriage();
  say({
    queue: `${i.cad_ref} is queued for the next officer.`,
    allocate: `${i.cad_ref} is allocated to ${r.data.allocated_to}.`,
    reject: `${i.cad_ref} is rejected: ${reason}`,
  }[decision]);
  $('triage-h').focus();
  loadLists();
});

// ---- the queue ---------------------------------------------------------------

function renderQueue() {
  if (!me) return;
  $('queue-body').replaceChildren(...queue.map((i) => {
    const { minutes, overdue } = waiting(i, receivedAt);
    const state = i.state === 'allocated' ? `Allocated to ${i.allocated_to}` : STATE_TEXT[i.state] || i.state;
    const tr = row([i.cad_ref, String(i.grade), state, fmtTime(i.reported_at), fmtMinutes(minutes),
      targetCell(i, overdue)], overdue ? 'overdue-row' : null);
    tr.dataset.incident = i.id;
    return tr;
  }));
  $('queue-empty').hidden = queue.length > 0;
}

// ---- reviews -------------------------------------------------------------------

/** When a review is due, in words: "Overdue by 1 h 5 min", "Due in 3 h 20 min". */
function due(i) {
  if (!i.review_due_at) return { overdue: false, at: Infinity, node: el('span', 'Not yet due: the call is open') };
  const at = new Date(i.review_due_at).getTime();
  const minutes = (at - Date.now()) / 60000;
  if (minutes < 0) return { overdue: true, at, node: el('strong', `Overdue by ${fmtMinutes(-minutes)}`, 'overdue') };
  return { overdue: false, at, node: el('span', `Due in ${fmtMinutes(minutes)}`, minutes < 180 ? 'due-soon' : null) };
}

async function loadReviews() {
  if (!me) return;
  const r = await api('GET', '/api/incidents?state=awaiting_review');
  $('reviews-error').textContent = r.ok ? '' : errorText(r, 'Could not load the reviews due.');
  if (!r.ok) return;
  const list = r.data.incidents.map((i) => ({ i, d: due(i) }))
    .sort((a, b) => (b.d.overdue - a.d.overdue) || (a.d.at - b.d.at) || String(a.i.submitted_at).localeCompare(b.i.submitted_at));
  redraw($('reviews-body'), list.map(({ i, d }) => {
    const tr = row([i.cad_ref, i.dispatched_to || '–', fmtTime(i.submitted_at), d.node,
      button('Review', `Review ${i.cad_ref}`, `review-${i.id}`, () => openReview(i.id))], d.overdue ? 'overdue-row' : null);
    tr.dataset.incident = i.id;
    return tr;
  }));
  $('reviews-empty').hidden = list.length > 0;
  if (reviewFor && !list.some(({ i }) => i.id === reviewFor.id)) closeReview(); // reviewed elsewhere
}

function lines(items) {
  return items?.length ? items.join('\n') : 'None';
}

function witnessText(w) {
  if (w == null) return '';
  if (typeof w !== 'object') return String(w);
  return Object.entries(w).map(([k, v]) => (k === 'details' || k === 'name' ? String(v) : `${k}: ${JSON.stringify(v)}`)).join(', ');
}

async function openReview(id) {
  $('reviews-error').textContent = '';
  const r = await api('GET', `/api/incidents/${encodeURIComponent(id)}`);
  if (!r.ok) return void ($('reviews-error').textContent = errorText(r, 'Could not open the incident.'));
  const i = r.data;
  reviewFor = i;
  $('review-form').reset();
  for (const p of ['rv-error', 'e-investigation_plan']) $(p).textContent = '';
  $('rv-ref').textContent = i.cad_ref;
  const facts = $('rv-facts');
  facts.replaceChildren();
  fact(facts, 'Officer', i.dispatched_to);
  fact(facts, 'Grade', `${i.grade}${i.category ? `, ${i.category}` : ''}`);
  fact(facts, 'Reported', fmtTime(i.reported_at));
  fact(facts, 'Arrived (call started)', fmtTime(i.arrived_at));
  fact(facts, 'Call closed', fmtTime(i.call_closed_at));
  fact(facts, 'Submitted', fmtTime(i.submitted_at));
  fact(facts, 'Review due', i.review_due_at ? `${fmtTime(i.review_due_at)} (${due(i).node.textContent})` : '–');
  const rec = i.investigation || {};
  const dl = $('rv-record');
  dl.replaceChildren();
  fact(dl, 'Summary', rec.summary);
  fact(dl, 'Offence', rec.offence);
  fact(dl, 'Suspect', rec.suspect ? `${rec.suspect.identified ? 'Identified' : 'Not identified'}`
    + `${rec.suspect.details ? `: ${rec.suspect.details}` : ''}` : '');
  fact(dl, 'Witnesses', lines((rec.witnesses || []).map(witnessText)));
  fact(dl, 'Lines of enquiry', lines(rec.lines_of_enquiry));
  const s = rec.safeguarding || {};
  fact(dl, 'Safeguarding', `Risk: ${s.risk || '–'}. Referrals: ${s.referrals?.length ? s.referrals.join('; ') : 'none'}. `
    + `Advice given: ${s.advice_given ? 'yes' : 'no'}.`);
  const ev = rec.evidence || {};
  fact(dl, 'Evidence', `${ev.recordings?.length || 0} recording(s), ${ev.uploads?.length || 0} upload(s), `
    + `${ev.statements?.length || 0} statement(s)`);
  if (i.review?.investigation_plan) fact(dl, 'Previous plan', i.review.investigation_plan);
  $('rv-timeline').replaceChildren(...(i.timeline || []).map((t) => el('li',
    `${fmtTime(t.at)}: ${KIND_TEXT[t.kind] || t.kind}${t.to && t.to !== t.from ? ` (${STATE_TEXT[t.to] || t.to})` : ''}, `
    + `${t.actor} (${t.role})${t.reason ? `: ${t.reason}` : ''}`)));
  $('review').hidden = false;
  $('review-h').focus();
}

function closeReview() {
  reviewFor = null;
  $('review').hidden = true;
}

$('rv-cancel').addEventListener('click', closeReview);

$('review-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  if (!reviewFor) return;
  const f = e.target.elements;
  const body = { outcome: f.outcome.value };
  const plan = f.investigation_plan.value.trim();
  const reason = f.reason.value.trim();
  if (plan) body.investigation_plan = plan;
  if (reason) body.reason = reason;
  $('rv-error').textContent = '';
  $('e-investigation_plan').textContent = '';
  if (body.outcome !== 'finalised' && !plan) {
    $('e-investigation_plan').textContent = 'Write the investigation plan: it goes on with the incident.';
    $('rv-error').textContent = 'An investigation plan is required unless you finalise.';
    return void f.investigation_plan.focus();
  }
  const i = reviewFor;
  const r = await api('POST', `/api/incidents/${encodeURIComponent(i.id)}/review`, body);
  if (!r.ok) {
    $('rv-error').textContent = errorText(r, 'Could not record the review.');
    if ((r.data?.error?.fields || []).includes('investigation_plan')) $('e-investigation_plan').textContent = r.data.error.message;
    return;
  }
  closeReview();
  say(`Review of ${i.cad_ref} recorded: ${OUTCOME_TEXT[r.data.state] || r.data.state}`
    + `${r.data.review_overdue ? ' (after its 24 hours: recorded as overdue)' : ''}.`);
  $('reviews-h').focus();
  loadLists();
});

clearsFieldErrors($('triage-form'));
clearsFieldErrors($('review-form'));
