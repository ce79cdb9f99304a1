// victim-uploads.js: "Send photos or files" on the victim's page: a tus upload per
// file with a progress bar, pause and resume, and a receipt (name, size, SHA-256,
// exhibit reference) once the server has it.
import { $, el, linkURL } from '/static/link.js';
import { TusUpload, formatSize } from '/static/upload.js';

const endpoint = linkURL('uploads');

async function receipt(upload) {
  for (let i = 0; i < 120; i += 1) { // the server finishes checking the file after the last byte
    const r = await fetch(upload.url, { credentials: 'same-origin', cache: 'no-store' });
    if (r.ok) {
      const data = await r.json();
      if (data.status !== 'uploading') return data;
    }
    await new Promise((done) => setTimeout(done, 1000));
  }
  return null;
}

function showReceipt(item, data) {
  const dl = el('dl', null, 'receipt');
  for (const [term, value] of [['File', data.filename], ['Size', formatSize(data.size)],
    ['Exhibit reference', data.exhibit_ref], ['SHA-256 fingerprint', data.sha256]]) {
    dl.append(el('dt', term), el('dd', value || '–'));
  }
  item.querySelector('.upload-actions').replaceChildren(el('p', 'Received by the police. Keep this receipt.', 'upload-done'));
  item.append(dl);
}

function addFile(file) {
  if (file.size === 0) { // the server refuses empty files (nothing to keep as evidence)
    const item = el('li', null, 'upload-item');
    item.append(el('p', `${file.name} is empty, so it was not sent. Choose another file.`, 'upload-status'));
    $('upload-list').append(item);
    return;
  }
  const item = el('li', null, 'upload-item');
  const name = el('p', `${file.name} (${formatSize(file.size)})`, 'upload-name');
  const bar = el('progress');
  bar.max = file.size || 1;
  bar.value = 0;
  bar.setAttribute('aria-label', `Sending ${file.name}`);
  const status = el('p', 'Starting…', 'upload-status');
  status.setAttribute('role', 'status');
  const pause = el('button', 'Pause');
  pause.type = 'button';
  const actions = el('div', null, 'upload-actions');
  actions.append(pause);
  item.append(name, bar, status, actions);
  $('upload-list').append(item);

  const upload = new TusUpload(file, endpoint, {
    onProgress: (sent, total) => {
      bar.value = sent;
      status.textContent = `Sending: ${total ? Math.floor((sent / total) * 100) : 100}%`;
    },
    onState: (state) => {
      if (state === 'paused') { status.textContent = 'Paused. Tap Resume to carry on.'; pause.textContent = 'Resume'; }
      if (state === 'sending') pause.textContent = 'Pause';
      if (state === 'retrying') status.textContent = 'Connection lost. Trying again…';
    },
    onSuccess: async (u) => {
      status.textContent = 'Sent. Checking the file…';
      pause.hidden = true;
      const data = await receipt(u);
      if (data) { status.textContent = 'Received.'; showReceipt(item, data); } else status.textContent = 'Sent. The receipt is not ready yet.';
    },
    onError: (err) => { status.textContent = `Not sent: ${err.message}`; pause.textContent = 'Try again'; },
  });
  pause.addEventListener('click', () => {
    if (upload.paused || pause.textContent === 'Try again') upload.resume(); else upload.pause();
  });
  upload.start();
}

$('upload-input')?.addEventListener('change', (e) => {
  for (const file of e.target.files) addFile(file);
  e.target.value = '';
});
