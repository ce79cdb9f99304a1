// statement-draft.js: the officer's MG11 panel in a call. The officer writes the
// statement (witness, text, exhibits from the uploads, who read it to the witness,
// the rear page); it is saved as they type (every differing save is a version kept
// by the server), sent to the victim's page to sign, and each step (sent, a change
// asked for, signed) shows here live: call.js passes the server's
// {type: 'statement'} messages on as the window event 'evr:statement'.
import { $, api, el } from '/static/staff.js';

const AUTOSAVE_MS = 1200;
const POLL_MS = 10000;

let consultation = null;
let statement = null; // the server's view of the statement being drafted
let saveTimer = null;
let saving = Promise.resolve();
let pollTimer = null;

const STATUS = {
  draft: 'Draft', awaiting_signature: 'Sent: waiting for the victim to sign',
  sealing: 'Signing…', signed: 'Signed and sealed',
};
const REAR_TEXT = [
  ['contact', 'Contact details (address, phone, email)', 'textarea'],
  ['preferred_contact', 'Preferred means of contact'],
  ['dates_to_avoid', 'Dates to avoid (court)'],
  ['special_measures', 'Special measures and needs', 'textarea'],
  ['taken_by', 'Statement taken by'],
  ['taken_where', 'Where'],
  ['taken_when', 'When'],
];
const REAR_YES_NO = [
  ['consent_medical_access', 'Consents to police access to medical records'],
  ['consent_medical_disclosure', 'Consents to disclosure of medical records'],
  ['vps_offered', 'Victim personal statement offered'],
  ['court_willing', 'Willing to attend court'],
];

const base = () => `/api/consultations/${encodeURIComponent(consultation)}/statements`;

// -- the form ------------------------------------------------------------------------

function field(id, label, kind = 'input') {
  const wrap = el('div', null, 'field');
  const l = el('label', label);
  l.htmlFor = id;
  const input = el(kind === 'textarea' ? 'textarea' : 'input');
  input.id = id;
  input.autocomplete = 'off';
  if (kind === 'textarea') input.rows = 3;
  wrap.append(l, input);
  return wrap;
}

function yesNo(id, label) {
  const wrap = el('div', null, 'field');
  const l = el('label', label);
  l.htmlFor = id;
  const select = el('select');
  select.id = id;
  for (const [value, text] of [['', 'Not asked'], ['yes', 'Yes'], ['no', 'No']]) {
    const o = el('option', text);
    o.value = value;
    select.append(o);
  }
  wrap.append(l, select);
  return wrap;
}

function build() {
  const root = $('statement-draft');
  const form = el('form', null, 'statement-form');
  form.id = 'md-form';
  form.noValidate = true;
  const fields = el('fieldset');
  fields.id = 'md-fields';
  fields.append(el('legend', 'Witness'), field('md-name', 'Witness name'));
  const adult = el('fieldset', null, 'yesno');
  adult.append(el('legend', 'Is the witness over 18?'));
  for (const [value, text] of [['yes', 'Yes'], ['no', 'No']]) {
    const l = el('label');
    const r = el('input');
    r.type = 'radio';
    r.name = 'md-over18';
    r.value = value;
    l.append(r, ` ${text}`);
    adult.append(l);
  }
  const age = field('md-age', 'Age (under 18)');
  age.querySelector('input').type = 'number';
  age.querySelector('input').min = '1';
  age.querySelector('input').max = '17';
  age.hidden = true;
  age.id = 'md-age-field';
  const text = field('md-text', 'Statement', 'textarea');
  text.querySelector('textarea').rows = 14;
  fields.append(adult, age, field('md-occupation', 'Occupation'), text);

  const exhibits = el('fieldset');
  exhibits.append(el('legend', 'Exhibits referred to'));
  const uploads = el('div', null, 'md-uploads');
  uploads.id = 'md-uploads';
  exhibits.append(uploads, field('md-refs', 'Other exhibit references (comma separated)'));

  const reader = el('fieldset');
  reader.append(el('legend', 'If the witness cannot read it'));
  const readLabel = el('label', null, 'confirm');
  const read = el('input');
  read.type = 'checkbox';
  read.id = 'md-read';
  readLabel.append(read, ' Someone read the statement to the witness');
  const readName = field('md-reader', 'Name of the person who read it');
  const readDecl = field('md-reader-decl', 'Their declaration (leave empty for the standard wording)', 'textarea');
  readName.hidden = true;
  readDecl.hidden = true;
  reader.append(readLabel, readName, readDecl);

  const rear = el('fieldset');
  rear.append(el('legend', 'Rear page: witness details (not disclosed)'));
  for (const [key, label, kind] of REAR_TEXT) rear.append(field(`md-${key}`, label, kind));
  for (const [key, label] of REAR_YES_NO) rear.append(yesNo(`md-${key}`, label));

  const send = el('fieldset');
  send.append(el('legend', 'Send to the victim to sign'), field('md-identification', 'How was the witness identified?'));
  const status = el('p', 'Not started. Type to begin: it is saved as you go.', 'md-status');
  status.id = 'md-status';
  status.setAttribute('role', 'status');
  const change = el('p', null, 'md-change');
  change.id = 'md-change';
  change.setAttribute('role', 'alert');
  const error = el('p', null, 'error');
  error.id = 'md-error';
  error.setAttribute('role', 'alert');
  const actions = el('div', null, 'controls');
  const sendButton = el('button', 'Send to the victim to sign', 'primary');
  sendButton.type = 'submit';
  sendButton.id = 'md-send';
  const preview = el('a', 'Preview PDF');
  preview.id = 'md-preview';
  preview.target = '_blank';
  preview.rel = 'noopener';
  preview.hidden = true;
  const download = el('a', 'Download the signed PDF');
  download.id = 'md-download';
  download.hidden = true;
  const another = el('button', 'New statement');
  another.type = 'button';
  another.id = 'md-new';
  another.hidden = true;
  actions.append(sendButton, preview, download, another);
  form.append(status, change, fields, exhibits, reader, rear, send, error, actions);
  root.replaceChildren(form);

  form.addEventListener('input', (e) => {
    if (e.target.name === 'md-over18' || e.target === read) toggles();
    if (e.target.id === 'md-identification') return; // not part of the statement
    schedule();
  });
  form.addEventListener('change', (e) => { if (e.target.tagName === 'SELECT' || e.target.type === 'checkbox') schedule(); });
  form.addEventListener('submit', (e) => { e.preventDefault(); sendIt(); });
  another.addEventListener('click', () => { statement = null; fill(null); show(); });
}

function toggles() {
  const over = document.querySelector('input[name="md-over18"]:checked')?.value;
  $('md-age-field').hidden = over !== 'no';
  const read = $('md-read').checked;
  $('md-reader').parentElement.hidden = !read;
  $('md-reader-decl').parentElement.hidden = !read;
}

function yn(value) { return value === 'yes' ? true : value === 'no' ? false : null; }
function ynText(value) { return value === true ? 'yes' : value === false ? 'no' : ''; }

function collect() {
  const over = document.querySelector('input[name="md-over18"]:checked')?.value;
  const age = parseInt($('md-age').value, 10);
  const exhibits = [...document.querySelectorAll('#md-uploads input:checked')].map((c) => ({ upload_id: c.value }));
  for (const ref of $('md-refs').value.split(',').map((r) => r.trim()).filter(Boolean)) exhibits.push({ ref });
  const rear = {};
  for (const [key] of REAR_TEXT) rear[key] = $(`md-${key}`).value;
  for (const [key] of REAR_YES_NO) rear[key] = yn($(`md-${key}`).value);
  return {
    witness: { name: $('md-name').value, over_18: yn(over), age: over === 'no' && age ? age : null,
      occupation: $('md-occupation').value },
    text: $('md-text').value,
    exhibits,
    rear,
    read_to_witness: $('md-read').checked && $('md-reader').value.trim()
      ? { name: $('md-reader').value, declaration: $('md-reader-decl').value } : null,
  };
}

function fill(content) {
  const c = content || { witness: {}, text: '', exhibits: [], rear: {}, read_to_witness: null };
  $('md-name').value = c.witness.name || '';
  for (const r of document.querySelectorAll('input[name="md-over18"]')) r.checked = r.value === ynText(c.witness.over_18);
  $('md-age').value = c.witness.age || '';
  $('md-occupation').value = c.witness.occupation || '';
  $('md-text').value = c.text || '';
  const fromUploads = new Set(c.exhibits.filter((x) => x.upload_id).map((x) => x.upload_id));
  for (const box of document.querySelectorAll('#md-uploads input')) box.checked = fromUploads.has(box.value);
  $('md-refs').value = c.exhibits.filter((x) => !x.upload_id).map((x) => x.ref).join(', ');
  for (const [key] of REAR_TEXT) $(`md-${key}`).value = c.rear[key] || '';
  for (const [key] of REAR_YES_NO) $(`md-${key}`).value = ynText(c.rear[key]);
  $('md-read').checked = !!c.read_to_witness;
  $('md-reader').value = c.read_to_witness?.name || '';
  $('md-reader-decl').value = c.read_to_witness?.declaration || '';
  toggles();
}

// -- saving, sending, following ------------------------------------------------------

function show() {
  const s = statement;
  const signed = s?.status === 'signed';
  $('md-fields').disabled = signed;
  $('md-send').hidden = signed;
  $('md-new').hidden = !signed;
  $('md-preview').hidden = !s;
  $('md-download').hidden = !signed;
  $('md-change').textContent = s?.status === 'draft' && s.change_request
    ? `The victim asked for a change: “${s.change_request}”` : '';
  if (!s) { $('md-status').textContent = 'Not started. Type to begin: it is saved as you go.'; return; }
  $('md-preview').href = `${base()}/${s.id}/preview`;
  $('md-download').href = `${base()}/${s.id}/pdf`;
  let text = `${STATUS[s.status] || s.status} (version ${s.version}`;
  if (s.pages) text += `, ${s.pages} page${s.pages === 1 ? '' : 's'}`;
  text += ')';
  if (signed && s.sha256) text += `. SHA-256 ${s.sha256}`;
  $('md-status').textContent = text;
}

function schedule() {
  clearTimeout(saveTimer);
  saveTimer = setTimeout(() => { saving = saving.then(save); }, AUTOSAVE_MS);
}

async function save() {
  clearTimeout(saveTimer);
  const content = collect();
  $('md-error').textContent = '';
  let r;
  if (!statement) {
    if (!content.witness.name && !content.text) return true;
    r = await api('POST', base(), content);
  } else if (statement.status === 'signed') {
    return true;
  } else {
    r = await api('PUT', `${base()}/${statement.id}`, { ...content, version: statement.version });
  }
  if (!r.ok) {
    $('md-error').textContent = r.data?.error?.message || `Not saved (${r.status || 'offline'}).`;
    if (r.status === 409) await load(statement?.id);
    return false;
  }
  const wasSent = statement?.status === 'awaiting_signature';
  statement = { ...statement, ...r.data, change_request: r.data.status === 'draft' ? statement?.change_request : null };
  show();
  if (wasSent && r.data.signature_cancelled) $('md-status').textContent += '. The change cancelled the signature request: send it again.';
  return true;
}

async function sendIt() {
  clearTimeout(saveTimer);
  saving = saving.then(save);
  if (!(await saving)) return;
  if (!statement) { $('md-error').textContent = 'Write the statement first.'; return; }
  const r = await api('POST', `${base()}/${statement.id}/send`, {
    identification: $('md-identification').value || undefined, version: statement.version,
  });
  if (!r.ok) { $('md-error').textContent = r.data?.error?.message || `Not sent (${r.status}).`; return; }
  await load(statement.id);
}

async function load(id) {
  if (!id) return;
  const r = await api('GET', `${base()}/${id}`);
  if (!r.ok) return;
  const editing = statement && statement.id === id && statement.version === r.data.version;
  statement = r.data;
  if (!editing) fill(r.data.content);
  show();
}

async function uploads() {
  const r = await api('GET', `/api/consultations/${encodeURIComponent(consultation)}/uploads`);
  const box = $('md-uploads');
  if (!r.ok) return;
  const ready = r.data.uploads.filter((u) => ['complete', 'quarantined'].includes(u.status));
  for (const u of ready) {
    if (box.querySelector(`input[value="${CSS.escape(u.id)}"]`)) continue;
    const l = el('label', null, 'md-upload');
    const c = el('input');
    c.type = 'checkbox';
    c.value = u.id;
    l.append(c, ` ${u.exhibit_ref || '(no reference)'}: ${u.filename}`);
    box.append(l);
    if (statement?.content?.exhibits?.some((x) => x.upload_id === u.id)) c.checked = true;
  }
}

async function poll() {
  if (!consultation) return;
  await uploads();
  if (statement && statement.status !== 'signed') {
    const r = await api('GET', base());
    const now = r.ok && r.data.statements.find((s) => s.id === statement.id);
    if (now && (now.status !== statement.status || now.version !== statement.version)) await load(statement.id);
  }
}

async function follow() {
  const view = $('v-call');
  const id = view.hidden ? null : view.dataset.consultation || null;
  if (id === consultation) return;
  consultation = id;
  statement = null;
  clearInterval(pollTimer);
  if (!id) return;
  build();
  fill(null);
  show();
  await uploads();
  const r = await api('GET', base());
  const newest = r.ok ? r.data.statements.filter((s) => s.status !== 'signed').pop() || r.data.statements.pop() : null;
  if (newest) await load(newest.id);
  pollTimer = setInterval(poll, POLL_MS);
}

window.addEventListener('evr:statement', (e) => {
  if (consultation && statement && e.detail?.id === statement.id) load(statement.id);
});
new MutationObserver(follow).observe($('v-call'), { attributes: true, attributeFilter: ['hidden', 'data-consultation'] });
follow();
