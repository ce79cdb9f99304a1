// statement-sign.js: the victim signs their witness statement (MG11) on this page.
// The statement is shown exactly as it will be sealed (the server's own pages and
// lines, with the real page count in the declaration); the victim types their full
// name, signs in a box with a finger or mouse, confirms, and signs, or asks the
// officer for a change. Follows the server's {type: 'statement'} messages (call.js
// passes them on as a window event 'evr:statement') and checks every 15 s anyway.
import { $, el, getJSON, linkURL, postJSON, token } from '/static/link.js';

const base = linkURL('statements');
const POLL_MS = 15000;

let shown = null; // the statement on screen: {id, version, status, document_sha256, pages}
let busy = false;

// -- the pages, as sealed ------------------------------------------------------------

// Lines of running text (the PDF's lines, in order) flow into paragraphs, so a phone
// narrower than A4 shows them without ragged breaks; pages stay as sealed.
const FLOW = new Set(['body', 'declaration', 'small']);

function sheet(page, pages) {
  const art = el('article', null, `sheet sheet-${page.kind}`);
  art.setAttribute('aria-label', page.kind === 'statement' ? `Page ${page.number} of ${pages}` : 'Witness details page');
  let para = null;
  for (const row of page.rows) {
    if (FLOW.has(row.kind) && row.text) {
      if (!para || !para.classList.contains(`sr-${row.kind}`)) {
        para = el('p', null, `sr sr-${row.kind}`);
        art.append(para);
      }
      para.append(el('span', `${row.text} `, 'line'));
      continue;
    }
    para = null;
    if (FLOW.has(row.kind) || row.kind === 'gap') { art.append(el('div', null, 'sr-gap')); continue; }
    const p = el('p', null, `sr sr-${row.kind}`);
    if (row.kind === 'title') {
      p.append(el('span', row.text), el('span', row.label, 'sr-form'));
    } else if (row.kind === 'sign' || row.kind === 'fill') {
      p.append(el('span', row.label, 'sr-label'),
        el('span', row.kind === 'sign' ? 'your signature goes here' : 'your full name goes here', 'sr-slot'));
    } else {
      if (row.label !== undefined && row.kind === 'field') p.append(el('span', row.label || '', 'sr-label'));
      p.append(document.createTextNode(row.text || ''));
    }
    art.append(p);
  }
  const foot = el('footer', null, 'sheet-foot');
  foot.append(el('span', 'Signature: your signature goes here', 'sr-slot'), el('span', page.footer));
  art.append(foot);
  return art;
}

// -- the signature pad -------------------------------------------------------------

function pad(canvas) {
  const g = canvas.getContext('2d');
  let drawing = false;
  let inked = 0;
  const point = (e) => {
    const box = canvas.getBoundingClientRect();
    return [(e.clientX - box.left) * (canvas.width / box.width), (e.clientY - box.top) * (canvas.height / box.height)];
  };
  g.lineWidth = 4;
  g.lineCap = 'round';
  g.lineJoin = 'round';
  g.strokeStyle = '#10104a';
  canvas.addEventListener('pointerdown', (e) => {
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    drawing = true;
    const [x, y] = point(e);
    g.beginPath();
    g.moveTo(x, y);
    g.lineTo(x + 0.1, y + 0.1);
    g.stroke();
  });
  canvas.addEventListener('pointermove', (e) => {
    if (!drawing) return;
    const [x, y] = point(e);
    g.lineTo(x, y);
    g.stroke();
    inked += 1;
  });
  const stop = () => { drawing = false; };
  canvas.addEventListener('pointerup', stop);
  canvas.addEventListener('pointercancel', stop);
  return {
    get empty() { return inked < 3; },
    clear() { g.clearRect(0, 0, canvas.width, canvas.height); inked = 0; },
    png() { return canvas.toDataURL('image/png'); },
  };
}

// -- the screen ----------------------------------------------------------------------

function say(text, cls = 'statement-note') {
  const box = $('statement');
  box.hidden = false;
  box.replaceChildren(el('h2', 'Your statement', null), el('p', text, cls));
  box.querySelector('h2').id = 'statement-h';
}

function render(s) {
  const box = $('statement');
  box.hidden = false;
  const h = el('h2', 'Your statement');
  h.id = 'statement-h';
  h.tabIndex = -1;
  const intro = el('p', `The officer has written down your statement. Read it carefully: it is shown exactly as it `
    + `will be signed and kept (${s.pages} page${s.pages === 1 ? '' : 's'}, then a page of your contact details).`);
  const pages = el('div', null, 'sheets');
  for (const page of s.sheets) pages.append(sheet(page, s.pages));

  const form = el('form', null, 'sign-form');
  form.noValidate = true;
  const decl = el('p', s.declaration, 'declaration');
  decl.id = 'st-declaration';
  const nameLabel = el('label', 'Your full name');
  nameLabel.htmlFor = 'st-name';
  const name = el('input');
  name.id = 'st-name';
  name.autocomplete = 'off';
  name.value = s.witness?.name || '';
  const padLabel = el('p', 'Sign in the box with your finger or mouse', 'pad-label');
  padLabel.id = 'st-pad-label';
  const canvas = el('canvas', null, 'sign-pad');
  canvas.width = 600;
  canvas.height = 200;
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-labelledby', 'st-pad-label');
  const signature = pad(canvas);
  const clear = el('button', 'Clear signature');
  clear.type = 'button';
  clear.addEventListener('click', () => signature.clear());
  const confirmWrap = el('div', null, 'confirm');
  const confirm = el('input');
  confirm.type = 'checkbox';
  confirm.id = 'st-confirm';
  const confirmLabel = el('label', `I have read all ${s.pages} page${s.pages === 1 ? '' : 's'}. The declaration above `
    + 'is true, and I am signing this statement.');
  confirmLabel.htmlFor = 'st-confirm';
  confirmWrap.append(confirm, confirmLabel);
  const error = el('p', null, 'error');
  error.setAttribute('role', 'alert');
  const submit = el('button', 'Sign my statement', 'primary');
  submit.type = 'submit';
  form.append(el('h3', 'Declaration'), decl, nameLabel, name, padLabel, canvas, clear, confirmWrap, error, submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (busy) return;
    if (!name.value.trim()) { error.textContent = 'Type your full name.'; name.focus(); return; }
    if (signature.empty) { error.textContent = 'Sign in the box first.'; return; }
    if (!confirm.checked) { error.textContent = 'Tick the box to confirm the declaration.'; confirm.focus(); return; }
    busy = true;
    submit.disabled = true;
    error.textContent = '';
    const r = await postJSON(`${base}/${s.id}/sign`, {
      typed_name: name.value, signature_png: signature.png(), declaration_accepted: true,
      document_sha256: s.document_sha256,
    });
    busy = false;
    submit.disabled = false;
    if (r.ok) { signed(r.body); return; }
    if (r.status === 409) { error.textContent = 'The statement changed. Please read it again.'; refresh(true); return; }
    error.textContent = r.body?.error?.message || 'Could not sign. Check your connection and try again.';
  });

  const change = el('form', null, 'change-form');
  const changeLabel = el('label', 'Something wrong or missing? Tell the officer what should change');
  changeLabel.htmlFor = 'st-change';
  const text = el('textarea');
  text.id = 'st-change';
  text.rows = 3;
  text.maxLength = 4000;
  const changeError = el('p', null, 'error');
  changeError.setAttribute('role', 'alert');
  const ask = el('button', 'Ask for a change');
  ask.type = 'submit';
  change.append(changeLabel, text, changeError, ask);
  change.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!text.value.trim()) { changeError.textContent = 'Say what should change.'; text.focus(); return; }
    const r = await postJSON(`${base}/${s.id}/change`, { message: text.value });
    if (r.ok) {
      shown = { ...shown, status: 'draft' };
      say('Thank you. The officer will change your statement and send it back to you here.');
      return;
    }
    changeError.textContent = r.body?.error?.message || 'Could not send. Try again.';
  });
  box.replaceChildren(h, intro, pages, form, change);
}

function signed(result) {
  shown = { ...shown, status: 'signed' };
  say('You have signed your statement. Thank you. It is sealed and kept as evidence.');
  const ref = el('p', `Reference (SHA-256): ${result.sha256 || ''}`, 'statement-ref');
  $('statement').append(ref);
  $('statement').querySelector('h2').focus?.();
}

async function refresh(force = false) {
  if (!token || !$('statement')) return; // a guest's page has no statement to sign
  const list = await getJSON(base);
  if (!list.ok) return;
  const waiting = list.body.statements.filter((s) => s.status === 'awaiting_signature').pop();
  if (!waiting) {
    if (shown && shown.status === 'awaiting_signature') {
      const now = list.body.statements.find((s) => s.id === shown.id);
      if (now?.status === 'signed') signed(now);
      else { shown = { ...shown, status: 'draft' }; say('The officer is changing your statement. You will see it here again.'); }
    }
    return;
  }
  if (!force && shown && shown.id === waiting.id && shown.version === waiting.version && shown.status === waiting.status) return;
  const one = await getJSON(`${base}/${waiting.id}`);
  if (!one.ok) return;
  shown = one.body;
  render(one.body);
}

window.addEventListener('evr:statement', () => refresh());
setInterval(() => { if (!busy) refresh(); }, POLL_MS);
refresh();
