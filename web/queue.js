// queue.js: the live queue board, served at /queue (officers and sergeants).
// The queue comes from the board's socket (GET /api/queue/ws: on open and after
// every change, so nothing reloads); an officer takes the next incident, phones the
// victim, starts the video call (in the console, /console#c=<id>) and submits the
// investigation record. Every value goes in as text, never as HTML.
import { $, api, el, errorText, roleHome } from '/static/staff.js';
import { clearsFieldErrors, fmtMinutes, fmtTime, liveQueue, row, STATE_TEXT, targetCell, waiting } from '/static/queue-live.js';

const ACTIVE = ['dispatched', 'in_call', 'evr_desk_enquiries'];

let me = null;
let live = null;
let ticker = null;
let queue = [];
let receivedAt = 0;
let recordFor = null; // the incident whose investigation record is open

// ---- sign in and out -----------------------------------------------------

roleHome({
  roles: ['officer', 'sergeant'],
  refused: 'The queue board is for officers and sergeants. Your role may not use it.',
  onSignedIn(who) {
    me = who;
    const officer = who.role === 'officer';
    $('take-panel').hidden = !officer;
    $('mine-panel').hidden = !officer;
    $('queue-for').textContent = officer
      ? 'Incidents allocated to you come first, then the queue.'
      : 'Every allocated and queued incident. Triage and reviews are on the desk.';
    live = liveQueue({
      onQueue(list) {
        queue = list;
        receivedAt = Date.now();
        renderQueue();
        if (officer) loadMine();
      },
      onLink(text) { $('live').textContent = text; },
    });
    clearInterval(ticker);
    ticker = setInterval(renderQueue, 30000); // waiting times move on between pushes
  },
  onSignedOut() {
    me = null;
    live?.close();
    live = null;
    clearInterval(ticker);
    queue = [];
    for (const id of ['queue-body', 'mine-body']) $(id).replaceChildren();
    $('record').hidden = true;
    $('call-link').hidden = true;
  },
});

// ---- the queue ------------------------------------------------------------

function flags(i) {
  return [i.vulnerability && 'Vulnerable', i.high_harm && 'High harm'].filter(Boolean).join(', ') || '–';
}

function renderQueue() {
  if (!me) return;
  $('queue-body').replaceChildren(...queue.map((i) => {
    const { minutes, overdue } = waiting(i, receivedAt);
    const allocated = i.allocated_to && i.state === 'allocated'
      ? (i.allocated_to === me.username ? 'You' : i.allocated_to) : '–';
    const tr = row([i.cad_ref, String(i.grade), i.category || '–', fmtTime(i.reported_at), fmtMinutes(minutes),
      targetCell(i, overdue), allocated, flags(i)], overdue ? 'overdue-row' : null);
    tr.dataset.incident = i.id;
    return tr;
  }));
  $('queue-empty').hidden = queue.length > 0;
}

// ---- take next -----------------------------------------------------------

$('take').addEventListener('click', async () => {
  $('take-error').textContent = '';
  $('take-status').textContent = '';
  const r = await api('POST', '/api/queue/take');
  if (r.status === 204) return void ($('take-status').textContent = 'Nothing is waiting: the queue is empty.');
  if (!r.ok) return void ($('take-error').textContent = errorText(r, 'Could not take an incident.'));
  const i = r.data;
  $('take-status').textContent = `You took ${i.cad_ref} (grade ${i.grade}${i.category ? `, ${i.category}` : ''}). `
    + 'It is under My incidents: phone the victim or start the video call.';
  loadMine();
});

// ---- my incidents ---------------------------------------------------------

async function loadMine() {
  if (!me || me.role !== 'officer') return;
  const r = await api('GET', '/api/incidents');
  $('mine-error').textContent = r.ok ? '' : errorText(r, 'Could not load your incidents.');
  if (!r.ok) return;
  const mine = r.data.incidents
    .filter((i) => i.dispatched_to === me.username && ACTIVE.includes(i.state))
    .sort((a, b) => String(a.reported_at).localeCompare(b.reported_at));
  const focused = document.activeElement?.dataset?.action; // keep focus across redraws
  $('mine-body').replaceChildren(...mine.map(mineRow));
  if (focused) document.querySelector(`[data-action="${CSS.escape(focused)}"]`)?.focus();
  $('mine-empty').hidden = mine.length > 0;
}

function button(text, label, action, onClick, className) {
  const b = el('button', text, className);
  b.type = 'button';
  b.dataset.action = action;
  b.setAttribute('aria-label', label);
  b.addEventListener('click', onClick);
  return b;
}

function mineRow(i) {
  const ref = i.cad_ref;
  const state = el('div');
  const closed = i.state === 'in_call' && i.call_closed_at;
  state.append(el('span', closed ? 'Call closed: submit the record' : STATE_TEXT[i.state] || i.state));
  if (i.state === 'evr_desk_enquiries' && i.review?.investigation_plan) {
    state.append(el('p', `Plan: ${i.review.investigation_plan}`, 'hint'));
  }
  const actions = el('div', null, 'row');
  if (['dispatched', 'in_call', 'evr_desk_enquiries'].includes(i.state)) {
    actions.append(button('Phoned victim', `Phoned the victim of ${ref}`, `phoned-${i.id}`, () => phoned(i)));
  }
  if (i.state === 'dispatched' || i.state === 'evr_desk_enquiries') {
    actions.append(button('Start video call', `Start the video call for ${ref}`, `call-${i.id}`,
      () => startCall(i), 'primary'));
  }
  const callOpen = i.state === 'in_call' && !i.call_closed_at;
  if (callOpen && i.consultation_id) {
    actions.append(button('Rejoin video call', `Rejoin the video call for ${ref}`, `rejoin-${i.id}`,
      () => location.assign(`/console#c=${encodeURIComponent(i.consultation_id)}`)));
  }
  if ((i.state === 'in_call' && !callOpen) || i.state === 'evr_desk_enquiries') { // after the call
    actions.append(button('Submit investigation record', `Submit the investigation record for ${ref}`,
      `record-${i.id}`, () => openRecord(i)));
  }
  const tr = row([ref, String(i.grade), i.category || '–', state, i.phoned_at ? fmtTime(i.phoned_at) : 'Not yet',
    actions]);
  tr.dataset.incident = i.id;
  return tr;
}

async function phoned(i) {
  $('mine-error').textContent = '';
  const r = await api('POST', `/api/incidents/${encodeURIComponent(i.id)}/phoned`);
  if (!r.ok) return void ($('mine-error').textContent = errorText(r, `Could not record the call to ${i.cad_ref}.`));
  $('mine-status').textContent = `Your phone call to the victim of ${i.cad_ref} is recorded (${fmtTime(r.data.phoned_at)}).`;
  loadMine();
}

async function startCall(i) {
  $('mine-error').textContent = '';
  const r = await api('POST', `/api/incidents/${encodeURIComponent(i.id)}/consultation`);
  if (r.status !== 201) return void ($('mine-error').textContent = errorText(r, `Could not start the call for ${i.cad_ref}.`));
  const c = r.data;
  const call = `/console#c=${encodeURIComponent(c.id)}`;
  if (c.message?.status === 'sent') return void location.assign(call);
  showLink(i, c, call); // the victim needs the link another way first: this is the one chance to see it
}

function showLink(i, c, call) {
  const m = c.message;
  const how = !m ? 'The victim asked to be phoned: read this link out to them.'
    : m.status === 'failed' ? `Sending the link failed (${m.error || 'no reason given'}): give it to the victim another way.`
      : `The ${m.channel === 'email' ? 'email' : 'SMS'} to ${m.recipient} is not sent automatically here: `
        + 'send it, or read the link to the victim.';
  $('call-link-ref').textContent = i.cad_ref;
  $('call-link-how').textContent = how;
  $('call-link-url').value = c.join_url;
  $('call-link-message').textContent = m?.body || '';
  $('call-link-message').hidden = !m?.body;
  $('call-link-join').onclick = () => location.assign(call);
  $('call-link').hidden = false;
  $('call-link-h').focus();
  loadMine();
}

// ---- the investigation record ------------------------------------------------

function lines(text) {
  return text.split('\n').map((s) => s.trim()).filter(Boolean);
}

function openRecord(i) {
  recordFor = i;
  $('record-form').reset();
  for (const p of document.querySelectorAll('#record-form .field-error')) p.textContent = '';
  $('record-error').textContent = '';
  $('record-ref').textContent = i.cad_ref;
  $('record').hidden = false;
  $('record-h').focus();
}

$('record-cancel').addEventListener('click', () => {
  recordFor = null;
  $('record').hidden = true;
});

$('record-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  if (!recordFor) return;
  const f = e.target.elements;
  const body = {
    summary: f.summary.value.trim(),
    offence: f.offence.value.trim(),
    suspect: { identified: f.identified.value === 'yes', details: f.suspect_details.value.trim() },
    witnesses: lines(f.witnesses.value).map((details) => ({ details })),
    lines_of_enquiry: lines(f.lines_of_enquiry.value),
    safeguarding: { risk: f.risk.value, referrals: lines(f.referrals.value), advice_given: f.advice_given.value === 'yes' },
  };
  const fieldError = { summary: $('r-summary-error'), offence: $('r-offence-error') };
  for (const p of Object.values(fieldError)) p.textContent = '';
  const missing = ['summary', 'offence'].filter((k) => !body[k]);
  for (const k of missing) fieldError[k].textContent = `Enter the ${k}.`;
  if (missing.length) {
    $('record-error').textContent = `The record needs the ${missing.join(' and the ')}.`;
    return void $(`r-${missing[0]}`).focus();
  }
  const i = recordFor;
  const r = await api('POST', `/api/incidents/${encodeURIComponent(i.id)}/investigation`, body);
  if (!r.ok) {
    $('record-error').textContent = errorText(r, 'Could not submit the record.');
    for (const name of r.data?.error?.fields || []) if (fieldError[name]) fieldError[name].textContent = r.data.error.message;
    return;
  }
  recordFor = null;
  $('record').hidden = true;
  $('mine-status').textContent = `The investigation record for ${i.cad_ref} is submitted for a sergeant's review.`;
  loadMine();
});

clearsFieldErrors($('record-form'));
