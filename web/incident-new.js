// incident-new.js: the call handler's page, served at /incidents/new (call handlers
// and sergeants). The eligibility script comes first, each question in the words
// the call handler reads out; any No stops the page and says what to do instead, and
// nothing is sent. With every answer Yes, the incident goes to POST /api/incidents
// and waits for a sergeant's triage. Every value goes in as text, never as HTML.
import { $, api, el, errorText, roleHome } from '/static/staff.js';
import { clearsFieldErrors, fmtTime, STATE_TEXT } from '/static/queue-live.js';

/**
 * The script: what is read out, word for word, and what to do on a No. ``send``:
 * the API's eligibility answer it is (the device question is asked, and a No stops,
 * but the API has no field for it).
 */
const QUESTIONS = [
  {
    name: 'adult_or_carer_present',
    say: 'Are you 18 or over, or is a parent or carer with you who can join the video call?',
    no: 'The victim is under 18 and no parent or carer can join. Do not enter it for a video response: '
      + 'deploy an officer to attend in person, following force policy for children, and consider safeguarding.',
  },
  {
    name: 'offender_absent',
    say: 'Is the person who did this away from you now, so that they cannot see or hear this call?',
    no: 'The offender is present. Do not enter it for a video response: treat it as an emergency, grade it for '
      + 'immediate attendance and deploy officers per force policy. If the caller is in danger, keep them on the line.',
  },
  {
    name: 'safe_location',
    say: 'Are you somewhere safe, where you can talk freely?',
    no: 'The victim is not somewhere safe to talk. Do not enter it for a video response: if they are in danger '
      + 'now, grade it as an emergency and deploy officers per force policy; otherwise arrange for an officer to '
      + 'attend, or call back when they can talk safely.',
  },
  {
    name: 'device',
    send: false,
    say: 'Do you have a smartphone with a camera, and mobile data or Wi-Fi you can use for a video call?',
    no: 'The victim has no phone with a camera and a connection, so a video call will not work. Do not enter it '
      + 'for a video response: arrange for an officer to attend in person, or a telephone appointment, per force '
      + 'policy.',
  },
  {
    name: 'consent',
    say: 'Instead of an officer visiting, an officer can see and speak to you by video call on your phone. '
      + 'The call is recorded, like an officer\'s body-worn camera. You can still ask for an officer to visit '
      + 'instead. Are you happy to have a video call?',
    no: 'The victim does not want a video call: that is their choice. Do not enter it for a video response: '
      + 'deploy an officer to attend in person, per force policy.',
  },
];

/** Where each field the API names is shown (its input, by id). */
const FIELD_INPUT = {
  cad_ref: 'cad_ref', grade: 'grade', category: 'category', reported_at: 'reported_at', summary: 'summary',
  'victim.name': 'v-name', 'victim.phone': 'v-phone', 'victim.email': 'v-email', 'victim.language': 'v-language',
  'victim.preferred_contact': null,
};

let me = null;

// ---- sign in and out -----------------------------------------------------

roleHome({
  roles: ['call_handler', 'sergeant'],
  refused: 'This page is for call handlers and sergeants. Your role may not enter incidents.',
  onSignedIn(who) {
    me = who;
    startOver();
    loadMine();
  },
  onSignedOut() {
    me = null;
    $('mine-body').replaceChildren();
    $('created').textContent = '';
  },
});

// ---- the script ---------------------------------------------------------------

function renderQuestions() {
  $('questions').replaceChildren(...QUESTIONS.map((q, n) => {
    const set = el('fieldset', null, 'yesno');
    set.append(el('legend', q.say));
    for (const [value, text] of [['yes', 'Yes'], ['no', 'No']]) {
      const label = el('label');
      const input = el('input');
      input.type = 'radio';
      input.name = `q-${q.name}`;
      input.value = value;
      input.required = true;
      input.dataset.question = String(n);
      input.addEventListener('change', checkScript);
      label.append(input, ` ${text}`);
      set.append(label);
    }
    return set;
  }));
}

function answer(q) {
  return document.querySelector(`input[name="q-${q.name}"]:checked`)?.value || null;
}

/** Any No: stop, with what to do instead; every Yes: the incident's details. */
function checkScript() {
  const noes = QUESTIONS.filter((q) => answer(q) === 'no');
  const unanswered = QUESTIONS.filter((q) => answer(q) === null).length;
  const stop = $('stop');
  stop.replaceChildren();
  if (noes.length) {
    stop.append(el('h3', 'Stop: not suitable for a video response'));
    for (const q of noes) stop.append(el('p', q.no));
    stop.append(el('p', 'Nothing has been entered.'));
  }
  const eligible = !noes.length && !unanswered;
  const details = $('details');
  const was = !details.hidden;
  details.hidden = !eligible;
  for (const c of details.querySelectorAll('input, select, textarea, button')) c.disabled = !eligible;
  $('script-status').textContent = noes.length ? ''
    : unanswered ? `${unanswered} of ${QUESTIONS.length} questions still to ask.`
      : 'Every answer is Yes: enter the incident below.';
  if (eligible && !was) $('cad_ref').focus();
}

// ---- the incident ---------------------------------------------------------------

function localNow() {
  const d = new Date();
  d.setSeconds(0, 0);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function clearErrors() {
  $('create-error').textContent = '';
  for (const p of document.querySelectorAll('#details .field-error')) p.textContent = '';
  for (const c of document.querySelectorAll('#details [aria-invalid]')) c.removeAttribute('aria-invalid');
}

function showFieldError(field, message) {
  const p = document.getElementById(`e-${field}`);
  if (!p) return false;
  p.textContent = message;
  const input = FIELD_INPUT[field] && $(FIELD_INPUT[field]);
  input?.setAttribute('aria-invalid', 'true');
  return true;
}

function startOver() {
  $('incident-form').reset();
  renderQuestions();
  clearErrors();
  $('reported_at').value = localNow();
  checkScript();
}

$('incident-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  checkScript();
  if ($('details').hidden) return; // the script stopped it: nothing is sent
  clearErrors();
  const f = e.target.elements;
  const victim = { preferred_contact: f.preferred_contact.value, language: f.language.value.trim() || 'en' };
  for (const k of ['name', 'phone', 'email']) if (f[k].value.trim()) victim[k] = f[k].value.trim();
  const eligibility = Object.fromEntries(QUESTIONS.filter((q) => q.send !== false).map((q) => [q.name, answer(q) === 'yes']));
  const body = {
    cad_ref: f.cad_ref.value.trim(), grade: Number(f.grade.value), category: f.category.value.trim(),
    summary: f.summary.value.trim(), victim, eligibility,
    vulnerability: f.vulnerability.checked, high_harm: f.high_harm.checked,
  };
  if (f.reported_at.value) body.reported_at = new Date(f.reported_at.value).toISOString();
  const missing = [];
  if (!body.cad_ref) missing.push(['cad_ref', 'Enter the CAD reference.']);
  const needs = victim.preferred_contact === 'email' ? 'email' : 'phone';
  const by = { sms: 'by SMS', email: 'by email', phone: 'in a phone call' }[victim.preferred_contact];
  if (!victim[needs]) {
    missing.push([`victim.${needs}`, `Enter the victim's ${needs === 'email' ? 'email address' : 'phone number'} `
      + `to give them the link ${by}.`]);
  }
  if (missing.length) {
    for (const [field, message] of missing) showFieldError(field, message);
    $('create-error').textContent = missing.map(([, m]) => m).join(' ');
    return void $(FIELD_INPUT[missing[0][0]]).focus();
  }
  const r = await api('POST', '/api/incidents', body);
  if (r.status !== 201) {
    const error = r.data?.error;
    $('create-error').textContent = errorText(r, 'Could not enter the incident.');
    const fields = error?.fields || [];
    for (const field of fields) showFieldError(field, error.message);
    const first = fields.map((k) => FIELD_INPUT[k]).find(Boolean);
    if (first) $(first).focus();
    return;
  }
  $('created').textContent = `Incident ${r.data.cad_ref} entered: it waits for a sergeant's triage. `
    + 'For the next caller, start again from the first question.';
  startOver();
  $('v-home').querySelector('h1').focus();
  loadMine();
});

// ---- what I entered -------------------------------------------------------------

async function loadMine() {
  if (!me) return;
  const r = await api('GET', '/api/incidents');
  $('mine-error').textContent = r.ok ? '' : errorText(r, 'Could not load your incidents.');
  if (!r.ok) return;
  const mine = r.data.incidents.filter((i) => i.created_by === me.username).slice(0, 20);
  $('mine-body').replaceChildren(...mine.map((i) => {
    const tr = el('tr');
    for (const text of [i.cad_ref, String(i.grade), i.category || '–',
      fmtTime(i.reported_at),
      STATE_TEXT[i.state] || i.state]) tr.append(el('td', text));
    return tr;
  }));
  $('mine-empty').hidden = mine.length > 0;
}

clearsFieldErrors($('incident-form'));
