// console-uploads.js: the officer's "Evidence uploads" panel in a call: every upload
// of the consultation arriving with its progress, a preview (image thumbnail or a
// video's first frame, made by the server; or why there is none), who sent it (by
// role), quarantine flags, the exhibit reference
// (editable) and a link that downloads the original. Polls while the call is open.
import { $, api, el, errorText } from '/static/staff.js';
import { formatSize as size } from '/static/upload.js';

const POLL_MS = 2000;

let consultation = null;
let timer = null;
const rows = new Map(); // upload id -> {li, render}

const STATUS = {
  uploading: 'Arriving', complete: 'Received', quarantined: 'Quarantined: not an accepted file type',
  terminated: 'Cancelled by the sender', purged: 'Unfinished, removed',
};

function row(u) {
  const base = `/api/consultations/${consultation}/uploads/${u.id}`;
  const li = el('li', null, 'upload-item');
  const head = el('p', null, 'upload-name');
  const bar = el('progress');
  const status = el('p', null, 'upload-status');
  const facts = el('dl', null, 'receipt');
  const preview = el('div', null, 'upload-preview');
  const actions = el('div', null, 'upload-actions');
  li.append(preview, head, bar, status, facts, actions);
  let shown = false;
  function render(now) {
    // Who sent it by role (the victim has no name; a user name is only shown).
    const sender = now.uploader_role === 'victim' ? 'the victim' : `${now.uploaded_by} (${now.uploader_role})`;
    head.textContent = `${now.filename} (${size(now.size)}) from ${sender}`;
    bar.max = now.size || 1;
    bar.value = now.received;
    bar.hidden = now.status !== 'uploading';
    status.textContent = now.status === 'uploading'
      ? `${STATUS.uploading}: ${now.size ? Math.floor((now.received / now.size) * 100) : 100}%` : STATUS[now.status] || now.status;
    li.classList.toggle('quarantined', now.status === 'quarantined');
    if (!['complete', 'quarantined'].includes(now.status) || shown) return;
    shown = true;
    facts.replaceChildren();
    for (const [term, value] of [['Type', now.content_type], ['SHA-256', now.sha256], ['Sent as', now.original_name]]) {
      facts.append(el('dt', term), el('dd', value || '–'));
    }
    if (now.preview) {
      const img = el('img');
      img.alt = `Preview of ${now.filename}`;
      img.src = `${base}/preview`; // fetched once: each view is audit-logged
      preview.append(img);
    } else if (now.preview_skipped) {
      preview.append(el('p', now.preview_skipped, 'upload-status'));
    }
    const open = el('a', now.status === 'quarantined' ? 'Download (quarantined)' : 'Open (download)');
    open.href = `${base}/content`;
    open.setAttribute('download', now.filename);
    const label = el('label', 'Exhibit ref ');
    const ref = el('input');
    ref.value = now.exhibit_ref || '';
    ref.size = 12;
    label.append(ref);
    const save = el('button', 'Save');
    save.type = 'button';
    const said = el('span', null, 'upload-status');
    said.setAttribute('role', 'status');
    save.addEventListener('click', async () => {
      const r = await api('PATCH', base, { exhibit_ref: ref.value });
      said.textContent = r.ok ? 'Saved.' : errorText(r, 'Not saved');
    });
    actions.append(open, label, save, said);
  }
  return { li, render };
}

async function poll() {
  if (!consultation) return;
  const r = await api('GET', `/api/consultations/${consultation}/uploads`);
  if (!r.ok) return;
  const { uploads } = r.data;
  $('console-uploads-empty').hidden = uploads.length > 0;
  for (const u of uploads) {
    if (!rows.has(u.id)) {
      const made = row(u);
      rows.set(u.id, made);
      $('console-upload-list').prepend(made.li);
    }
    rows.get(u.id).render(u);
  }
}

function follow() {
  const view = $('v-call');
  const id = view.hidden ? null : view.dataset.consultation || null;
  if (id === consultation) return;
  consultation = id;
  clearInterval(timer);
  rows.clear();
  $('console-upload-list').replaceChildren();
  if (id) {
    poll();
    timer = setInterval(poll, POLL_MS);
  }
}

new MutationObserver(follow).observe($('v-call'), { attributes: true, attributeFilter: ['hidden', 'data-consultation'] });
follow();
