// console-recordings.js: a consultation's recordings in the officer's console.
// In the call view a panel lists them live (polling); from the list, "Recordings" opens
// the consultation's page with the same panel. Each recording can be played (a copy
// joined by remux; every viewing is audit-logged), marked evidential or not (with a
// reason) and exported for disclosure (with a reason). A finished recording can be
// redacted (console-redaction.js: mute ranges, boxes to blur, faces); the redacted copy
// is listed as a recording of its own ("Redacted copy of ..."), whose class follows
// the original's.

import { RedactionEditor } from '/static/console-redaction.js';
import { $, api, el, errorText } from '/static/staff.js';

const POLL_MS = 4000;

const fmtTime = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { timeStyle: 'medium' }) : '–');

function fmtSeconds(s) {
  const n = Math.round(s);
  return `${Math.floor(n / 60)}:${String(n % 60).padStart(2, '0')}`;
}

const WHO = { victim: 'Victim', officer: 'Officer', sergeant: 'Sergeant' };
const STATUS = { recording: 'Recording now', complete: 'Complete', terminated: 'Ended by a server restart' };
const CLASS = { non_evidential: 'Non-evidential (kept 31 days)', evidential: 'Evidential' };

const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/** What a redacted copy had done to it (its ``redaction`` operations), in words. */
function redactionText(ops) {
  if (!ops) return 'Redacted';
  const done = [];
  if (ops.mute?.length) done.push(`${plural(ops.mute.length, 'range')} muted`);
  if (ops.blur?.length) done.push(`${plural(ops.blur.length, 'box', 'boxes')} blurred or masked`);
  if (ops.blur_faces) done.push('faces blurred');
  return done.join(', ') || 'Redacted';
}

/** A form that asks for a reason, then runs ``act(reason)``; says what happened. */
function reasonForm(label, button, act) {
  const form = el('form', null, 'reason-form');
  const id = `r-${Math.random().toString(36).slice(2)}`;
  const lab = el('label', label);
  lab.htmlFor = id;
  const input = el('input');
  input.id = id;
  input.required = true;
  input.maxLength = 1000;
  input.autocomplete = 'off';
  const go = el('button', button);
  go.type = 'submit';
  const said = el('p', null, 'upload-status');
  said.setAttribute('role', 'status');
  form.append(lab, input, go, said);
  form.hidden = true;
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    said.textContent = await act(input.value.trim());
  });
  return form;
}

/** The recordings panel of one consultation, rendered into ``root``. */
export class RecordingsPanel {
  constructor(root) {
    this.root = root;
    this.list = root.querySelector('.recording-list');
    this.empty = root.querySelector('.recordings-empty');
    this.player = root.querySelector('video');
    this.playing = root.querySelector('.recording-playing');
    this.rows = new Map();
    this.consultation = null;
    this.timer = null;
    this.editor = null;
    this.titles = new Map(); // recording id -> how the list names it (for "Redacted copy of ...")
  }

  /** How the list names a recording: who, from when; a redacted copy by its original. */
  title(rec) {
    if (rec.kind === 'redacted') {
      const source = this.titles.get(rec.source_recording);
      return `Redacted copy of ${source || 'a recording'}`;
    }
    return `${WHO[rec.participant] || rec.participant}${rec.participant_user ? ` (${rec.participant_user})` : ''}`
      + ` from ${fmtTime(rec.started_at)}`;
  }

  /** The redaction editor of ``rec``, below the list (one at a time); back to ``from`` when closed. */
  redact(rec, from) {
    this.editor?.close();
    const editor = new RedactionEditor({
      base: `/api/consultations/${encodeURIComponent(this.consultation)}/recordings`,
      recording: rec,
      title: this.title(rec),
      level: this.root.querySelector('h2') ? 3 : 2,
      onDone: () => this.refresh(),
      onClose: () => {
        if (this.editor === editor) this.editor = null;
        if (from.isConnected) from.focus();
      },
    });
    this.editor = editor;
    this.root.append(editor.node);
    editor.focus();
  }

  follow(consultation, poll) {
    if (consultation === this.consultation) return;
    clearInterval(this.timer);
    this.consultation = consultation;
    this.editor?.close();
    this.rows.clear();
    this.titles.clear();
    this.list.replaceChildren();
    this.player.removeAttribute('src');
    this.player.load();
    this.player.hidden = true;
    this.playing.textContent = '';
    if (!consultation) return;
    this.refresh();
    if (poll) this.timer = setInterval(() => this.refresh(), POLL_MS);
  }

  base(r) {
    return `/api/consultations/${encodeURIComponent(this.consultation)}/recordings/${encodeURIComponent(r.id)}`;
  }

  async refresh() {
    const consultation = this.consultation;
    const r = await api('GET', `/api/consultations/${encodeURIComponent(consultation)}/recordings`);
    if (!r.ok || consultation !== this.consultation) return;
    const { recordings } = r.data;
    this.empty.hidden = recordings.length > 0;
    for (const rec of recordings) if (rec.kind !== 'redacted') this.titles.set(rec.id, this.title(rec));
    for (const rec of recordings) {
      if (!this.rows.has(rec.id)) {
        const made = this.row(rec);
        this.rows.set(rec.id, made);
        this.list.append(made.li);
      }
      this.rows.get(rec.id).render(rec);
    }
  }

  row(first) {
    const li = el('li', null, 'upload-item recording-item');
    const head = el('p', null, 'upload-name');
    const facts = el('dl', null, 'receipt');
    const actions = el('div', null, 'upload-actions');
    const play = el('button', 'Play');
    play.type = 'button';
    const mark = el('button');
    mark.type = 'button';
    const exp = el('button', 'Export…');
    exp.type = 'button';
    const redact = el('button', 'Redact…');
    redact.type = 'button';
    actions.append(play, mark, exp, redact);
    let rec = first;
    const classify = reasonForm('Why? (kept in the audit log)', 'Save', async (reason) => {
      const to = rec.classification === 'evidential' ? 'non_evidential' : 'evidential';
      const r = await api('POST', `${this.base(rec)}/classification`, { classification: to, reason });
      if (!r.ok) return errorText(r, 'Not saved');
      render(r.data);
      return `Marked ${CLASS[r.data.classification].toLowerCase()}.`;
    });
    const exporter = reasonForm('Reason for the export (e.g. disclosure to CPS)', 'Download export', async (reason) => {
      const a = el('a');
      a.href = `${this.base(rec)}/export?reason=${encodeURIComponent(reason)}`;
      a.download = `recording-${rec.id}.zip`;
      document.body.append(a);
      a.click();
      a.remove();
      return 'Export downloading: original segments, signed manifest and how to verify them.';
    });
    li.append(head, facts, actions, classify, exporter);
    play.addEventListener('click', () => {
      this.player.hidden = false;
      this.player.src = `${this.base(rec)}/playback`;
      this.playing.textContent = `Playing: ${head.textContent}`;
      this.player.play().catch(() => {});
    });
    mark.addEventListener('click', () => { classify.hidden = !classify.hidden; exporter.hidden = true; });
    exp.addEventListener('click', () => { exporter.hidden = !exporter.hidden; classify.hidden = true; });
    redact.addEventListener('click', () => this.redact(rec, redact));

    const render = (now) => {
      rec = now;
      const copy = now.kind === 'redacted';
      head.textContent = this.title(now);
      const rows = [
        ['Status', STATUS[now.status] || now.status],
        ['Length', `${fmtSeconds(now.duration_s)} in ${now.segments} segment${now.segments === 1 ? '' : 's'}`],
        ...(copy ? [['Redaction', redactionText(now.redaction)]] : []),
        ['Class', copy ? `${CLASS[now.classification] || now.classification} (as the original)`
          : CLASS[now.classification] || now.classification],
        ['Manifest SHA-256', now.manifest_sha256 || 'sealed when the recording ends'],
      ];
      facts.replaceChildren(...rows.flatMap(([t, v]) => [el('dt', t), el('dd', v)]));
      play.disabled = now.segments === 0;
      exp.disabled = !now.manifest_sha256;
      mark.textContent = now.classification === 'evidential' ? 'Mark non-evidential…' : 'Mark evidential…';
      // A redacted copy's class follows its original's; copies are made of originals.
      mark.hidden = copy;
      if (copy) classify.hidden = true;
      redact.hidden = copy || now.status !== 'complete' || !now.manifest_sha256 || now.segments === 0;
    };
    render(first);
    return { li, render };
  }
}

// ---- wiring into the console ---------------------------------------------------

const inCall = new RecordingsPanel($('call-recordings'));
const onPage = new RecordingsPanel($('page-recordings'));

function followCall() {
  const view = $('v-call');
  inCall.follow(view.hidden ? null : view.dataset.consultation || null, true);
}
new MutationObserver(followCall).observe($('v-call'), { attributes: true, attributeFilter: ['hidden', 'data-consultation'] });
followCall();

function showOnly(id) {
  for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== id;
}

// "Recordings" in the list opens the consultation's page.
$('list-body').addEventListener('click', (e) => {
  const button = e.target.closest('[data-recordings]');
  if (!button) return;
  $('recordings-ref').textContent = button.dataset.ref;
  showOnly('v-recordings');
  onPage.follow(button.dataset.recordings, false);
  $('v-recordings').querySelector('h1').focus();
});
$('recordings-back').addEventListener('click', () => {
  onPage.follow(null, false);
  showOnly('v-home');
  $('list-h').scrollIntoView();
});
