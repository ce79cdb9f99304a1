// console-redaction.js: the redaction editor of the officer's console (issue 16).
// Before a recording is shown to anyone outside the case (a court, the press, another
// agency) what is not evidence may have to go: a bystander's face, an address on a
// letter, a name said aloud. The officer plays the recording, marks ranges to mute and
// draws boxes to blur (or mask) on its picture, each over a time range on the
// timeline, and previews the result here in the browser: the boxes are drawn over the
// picture and the sound goes off while they play, and nothing reaches the server until
// they run it, with a reason (kept in the audit log). The server then makes a new
// recording, a redacted copy with its own signed manifest naming what was done; the
// original is never changed. The job's progress shows here, it can be cancelled, a
// failure says why, and the copy plays beside the original once it is made.
//
// Times are seconds from the recording's start; a box is [x, y, width, height] as
// fractions of the video frame (the picture itself, not the letterboxed element), as
// the server's API takes them (POST .../recordings/{rid}/redactions).

import { api, el, errorText } from '/static/staff.js';

const POLL_MS = 1000;
/** A box smaller than this (a fraction of the frame, either way) is a stray click. */
const MIN_BOX = 0.01;
/** How far an arrow key moves or resizes a box, as a fraction of the frame. */
const STEP = 0.01;

const STYLE = { blur: 'Blur', mask: 'Solid mask' };

let made = 0;
/** An id no other element of the page has. */
const uid = (what) => `redact-${what}-${++made}`;

const round3 = (n) => Math.round(n * 1000) / 1000;
// A range marked at the current time starts at the tenth of a second before it and ends
// at the tenth after: rounded outwards, it never covers less than was marked.
const down = (t) => Math.floor(t * 10) / 10;
const up = (t, end) => Math.min(end, Math.ceil(t * 10) / 10);
const clamp = (n, lo, hi) => Math.min(hi, Math.max(lo, n));

/** Seconds as m:ss.t (the timeline's tenths of a second matter when marking a range). */
export function fmtClock(s) {
  const tenths = Math.max(0, Math.round(s * 10));
  const m = Math.floor(tenths / 600);
  const rest = (tenths % 600) / 10;
  return `${m}:${rest.toFixed(1).padStart(4, '0')}`;
}

/** A labelled control: {wrap, input, label}. ``tag`` input/select; ``type`` for inputs. */
function field(text, tag = 'input', type = 'text') {
  const input = el(tag);
  input.id = uid('f');
  if (tag === 'input') input.type = type;
  const label = el('label', text);
  label.htmlFor = input.id;
  const wrap = el('div', null, 'redact-field');
  wrap.append(label, input);
  return { wrap, input, label };
}

/** A number field for seconds (tenths). */
function secondsField(text, max) {
  const f = field(text, 'input', 'number');
  f.input.min = '0';
  f.input.max = String(max);
  f.input.step = '0.1';
  f.input.inputMode = 'decimal';
  return f;
}

function button(text, className) {
  const b = el('button', text, className);
  b.type = 'button';
  return b;
}

/** An error paragraph tied to ``input`` (aria-describedby), shown by ``say``. */
function errorFor(input) {
  const p = el('p', null, 'error');
  p.id = uid('err');
  input.setAttribute('aria-describedby', p.id);
  return {
    p,
    say(text) {
      p.textContent = text || '';
      if (text) input.setAttribute('aria-invalid', 'true');
      else input.removeAttribute('aria-invalid');
    },
  };
}

/**
 * Where the picture lies inside a <video> element (object-fit: contain letterboxes
 * it): {left, top, width, height} in CSS pixels from the element's corner.
 */
export function pictureBox(video) {
  const cw = video.clientWidth;
  const ch = video.clientHeight;
  const vw = video.videoWidth;
  const vh = video.videoHeight;
  if (!vw || !vh || !cw || !ch) return { left: 0, top: 0, width: cw, height: ch };
  const scale = Math.min(cw / vw, ch / vh);
  const width = vw * scale;
  const height = vh * scale;
  return { left: (cw - width) / 2, top: (ch - height) / 2, width, height };
}

/**
 * The editor of one recording. ``base``: the recordings URL of the consultation
 * (/api/consultations/{id}/recordings); ``recording``: its JSON; ``title``: how the
 * list names it; ``onDone(job)``: a redacted copy was made (the list shows it);
 * ``onClose()``; ``viewReason``: records staff open content only with a reason, so the
 * picture loads once the reason is given (officers and sergeants need none to play);
 * ``level``: its heading's level (under the page's headings). ``node`` is the editor's
 * section, to put in the page.
 */
export class RedactionEditor {
  constructor({ base, recording, title, onDone = () => {}, onClose = () => {}, viewReason = false, level = 3 }) {
    this.base = base;
    this.recording = recording;
    this.duration = recording.duration_s;
    this.onDone = onDone;
    this.onClose = onClose;
    this.viewReason = viewReason;
    this.mutes = [];   // [{from, to}]
    this.boxes = [];   // [{from, to, box: [x, y, w, h], style}]
    this.job = null;
    this.pollTimer = null;
    this.closed = false;

    const node = el('section', null, 'panel redaction-editor');
    const headingId = uid('h');
    node.setAttribute('aria-labelledby', headingId);
    this.heading = el(`h${level}`, `Redact: ${title}`);
    this.heading.id = headingId;
    this.heading.tabIndex = -1;
    const intro = el('p', 'Mark what to mute and draw boxes over what to blur, check the preview, then run it. '
      + 'The server makes a redacted copy; the original recording is never changed.', 'hint');
    const close = button('Close the editor');
    close.addEventListener('click', () => this.close());
    node.append(this.heading, intro, this.buildPlayer(), this.buildMutes(), this.buildBoxes(), this.buildRun(), close);
    this.node = node;

    if (!viewReason) this.load();
    this.resumeLatest();
    this.fetchEnd();
  }

  /**
   * Where the recording ends on its own timeline, as the server checks a range against
   * it: its end entry's time from its start. (``duration_s`` adds up the segments'
   * lengths, which overlap a little where a segment starts on a keyframe.)
   */
  async fetchEnd() {
    const r = await api('GET', this.url(this.recording.id));
    const end = r.ok ? (r.data?.entries || []).findLast((e) => e.type === 'end') : null;
    if (!end || this.closed) return;
    const seconds = Math.floor(Date.parse(end.at) - Date.parse(this.recording.started_at)) / 1000;
    if (Number.isFinite(seconds) && seconds > 0) this.setEnd(seconds);
  }

  setEnd(seconds) {
    const old = this.duration;
    this.duration = seconds;
    for (const input of this.node.querySelectorAll('input[type=number], input[type=range]')) {
      input.max = String(seconds);
    }
    for (const r of [...this.mutes, ...this.boxes]) {
      if (r.to === old || r.to > seconds) r.to = seconds; // "to the end" stays so
      r.from = Math.min(r.from, down(seconds - 0.1));
    }
    this.changed();
    this.tick();
  }

  url(rid) {
    return `${this.base}/${encodeURIComponent(rid)}`;
  }

  playbackUrl(rid) {
    const reason = this.reason.value.trim();
    return `${this.url(rid)}/playback${this.viewReason ? `?reason=${encodeURIComponent(reason)}` : ''}`;
  }

  load() {
    this.video.src = this.playbackUrl(this.recording.id);
  }

  focus() {
    this.heading.focus();
  }

  // ---- the player: video, overlay to draw on, controls, timeline -----------------

  buildPlayer() {
    const wrap = el('div', null, 'redact-videos');
    const original = el('figure', null, 'redact-figure');
    const stage = el('div', null, 'redact-stage');
    const video = el('video', null, 'redact-video');
    video.playsInline = true;
    video.preload = 'auto';
    video.setAttribute('aria-label', 'The recording, with the redaction previewed');
    this.video = video;

    // The overlay takes the pointer (drawing); the picture's own area inside it is
    // the frame, on which boxes lie in fractions of the picture.
    const overlay = el('div', null, 'redact-overlay');
    const frame = el('div', null, 'redact-frame');
    overlay.append(frame);
    this.overlay = overlay;
    this.frame = frame;
    stage.append(video, overlay);
    const caption = el('figcaption', 'Original (drag over the picture to draw a box to blur)');
    original.append(stage, caption);

    // The redacted copy, once made: plays beside the original.
    const copy = el('figure', null, 'redact-figure');
    copy.hidden = true;
    const copyVideo = el('video', null, 'redact-video redact-copy');
    copyVideo.controls = true;
    copyVideo.playsInline = true;
    copyVideo.setAttribute('aria-label', 'The redacted copy');
    copy.append(copyVideo, el('figcaption', 'Redacted copy (made by the server)'));
    this.copy = copy;
    this.copyVideo = copyVideo;
    wrap.append(original, copy);

    const controls = el('div', null, 'redact-controls');
    const play = button('Play');
    play.addEventListener('click', () => {
      if (video.paused) video.play().catch(() => {});
      else video.pause();
    });
    const both = button('Play both from the start');
    both.hidden = true;
    both.addEventListener('click', () => {
      for (const v of [video, copyVideo]) {
        v.currentTime = 0;
        v.play().catch(() => {});
      }
    });
    this.bothButton = both;
    const now = el('span', `${fmtClock(0)} of ${fmtClock(this.duration)}`, 'redact-now');
    now.setAttribute('aria-hidden', 'true'); // the position slider says the same, labelled
    const previewing = el('label', null, 'choice');
    const previewBox = el('input');
    previewBox.type = 'checkbox';
    previewBox.checked = true;
    previewing.append(previewBox, 'Preview the redaction (boxes over the picture, sound off where muted)');
    this.previewBox = previewBox;
    controls.append(play, both, now);

    // The timeline: a slider to move through the recording, and under it the marked
    // ranges (drawn only: the lists below say the same in words).
    const position = field('Position in the recording (seconds)', 'input', 'range');
    position.input.min = '0';
    position.input.max = String(this.duration);
    position.input.step = '0.1';
    position.input.value = '0';
    position.input.classList.add('redact-position');
    position.input.addEventListener('input', () => {
      video.currentTime = Number(position.input.value);
      this.preview();
    });
    const track = el('div', null, 'redact-track');
    track.setAttribute('aria-hidden', 'true');
    const marks = el('div', null, 'redact-marks');
    const head = el('div', null, 'redact-playhead');
    track.append(marks, head);
    this.position = position.input;
    this.marks = marks;
    this.playhead = head;
    const legend = el('p', 'On the timeline: muted ranges in orange, boxes in blue.', 'hint redact-legend');

    const tick = this.tick = () => {
      const t = video.currentTime;
      position.input.value = String(t);
      position.input.setAttribute('aria-valuetext', `${fmtClock(t)} of ${fmtClock(this.duration)}`);
      now.textContent = `${fmtClock(t)} of ${fmtClock(this.duration)}`;
      head.style.left = `${(this.duration ? clamp(t / this.duration, 0, 1) : 0) * 100}%`;
      this.preview();
    };
    video.addEventListener('timeupdate', tick);
    video.addEventListener('seeked', tick);
    video.addEventListener('play', () => { play.textContent = 'Pause'; });
    video.addEventListener('pause', () => { play.textContent = 'Play'; }); // also at the end
    // Frame by frame where the browser can (timeupdate comes only every quarter second).
    if ('requestVideoFrameCallback' in video) {
      const onFrame = () => {
        if (this.closed) return;
        tick();
        video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
    }
    video.addEventListener('loadedmetadata', () => this.placeFrame());
    this.resized = new ResizeObserver(() => this.placeFrame());
    this.resized.observe(video);
    previewBox.addEventListener('change', () => this.preview());

    this.drawing();
    const player = el('div', null, 'redact-player');
    player.append(wrap, controls, position.wrap, track, legend, previewing);
    return player;
  }

  /** Put the frame over the picture (the letterboxing of object-fit: contain left out). */
  placeFrame() {
    const p = pictureBox(this.video);
    Object.assign(this.frame.style, {
      left: `${p.left}px`, top: `${p.top}px`, width: `${p.width}px`, height: `${p.height}px`,
    });
  }

  /** Drawing boxes with the mouse, a pen or a finger (pointer events) over the picture. */
  drawing() {
    let start = null;
    let shape = null;
    const at = (e) => {
      const r = this.frame.getBoundingClientRect();
      return [clamp((e.clientX - r.left) / (r.width || 1), 0, 1), clamp((e.clientY - r.top) / (r.height || 1), 0, 1)];
    };
    const rect = (a, b) => [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(a[0] - b[0]), Math.abs(a[1] - b[1])];
    this.overlay.addEventListener('pointerdown', (e) => {
      if (e.button !== 0) return;
      e.preventDefault();
      this.overlay.setPointerCapture(e.pointerId);
      start = at(e);
      shape = el('div', null, 'redact-box drawing');
      this.frame.append(shape);
      place(shape, [...start, 0, 0]);
    });
    this.overlay.addEventListener('pointermove', (e) => {
      if (start) place(shape, rect(start, at(e)));
    });
    const finish = (e, keep) => {
      if (!start) return;
      const box = rect(start, at(e));
      shape.remove();
      start = null;
      shape = null;
      if (keep && box[2] >= MIN_BOX && box[3] >= MIN_BOX) this.addBox(box.map(round3));
    };
    this.overlay.addEventListener('pointerup', (e) => finish(e, true));
    this.overlay.addEventListener('pointercancel', (e) => finish(e, false));
  }

  /** What the picture and the sound would be now, had the redaction run. */
  preview() {
    const t = this.video.currentTime;
    const on = this.previewBox.checked;
    for (const b of this.boxes) {
      const active = b.from <= t && t < b.to;
      b.node.classList.toggle('is-active', on && active);
      b.node.classList.toggle('is-mask', b.style === 'mask');
    }
    this.video.muted = on && this.mutes.some((m) => m.from <= t && t < m.to);
  }

  /** The marked ranges on the timeline. */
  drawMarks() {
    const d = this.duration || 1;
    const mark = (r, kind) => {
      const m = el('div', null, `redact-mark ${kind}`);
      m.style.left = `${clamp(r.from / d, 0, 1) * 100}%`;
      m.style.width = `${clamp((r.to - r.from) / d, 0, 1) * 100}%`;
      return m;
    };
    this.marks.replaceChildren(...this.mutes.map((m) => mark(m, 'mute')), ...this.boxes.map((b) => mark(b, 'blur')));
  }

  changed() {
    this.drawMarks();
    this.renderMutes();
    this.renderBoxes();
    this.preview();
  }

  // ---- mute ranges --------------------------------------------------------------

  buildMutes() {
    const section = el('fieldset', null, 'redact-section');
    section.append(el('legend', 'Ranges to mute'));
    const from = secondsField('Mute from (seconds)', this.duration);
    const to = secondsField('Mute to (seconds)', this.duration);
    const here = button('Mute from here…');
    const fromNow = button('Start at the current time');
    const toNow = button('End at the current time');
    const add = button('Add the range to mute');
    const err = errorFor(to.input);
    this.mutesError = err;
    here.addEventListener('click', () => {
      from.input.value = String(down(this.video.currentTime));
      to.input.value = '';
      to.input.focus();
    });
    fromNow.addEventListener('click', () => { from.input.value = String(down(this.video.currentTime)); });
    toNow.addEventListener('click', () => { to.input.value = String(up(this.video.currentTime, this.duration)); });
    add.addEventListener('click', () => {
      const range = this.checkedRange(from.input.value, to.input.value, err);
      if (!range) return;
      this.mutes.push(range);
      this.mutes.sort((a, b) => a.from - b.from);
      from.input.value = '';
      to.input.value = '';
      this.changed();
    });
    const row = el('div', null, 'redact-row');
    row.append(from.wrap, fromNow, to.wrap, toNow);
    const list = el('ul', null, 'redact-list');
    this.muteList = list;
    const none = el('p', 'Nothing muted yet.', 'hint');
    this.mutesNone = none;
    section.append(here, row, add, err.p, none, list);
    return section;
  }

  /** {from, to} from two typed values, or null having said what is wrong. */
  checkedRange(fromText, toText, err) {
    const from = Number(fromText);
    const to = Number(toText);
    if (fromText === '' || toText === '' || !Number.isFinite(from) || !Number.isFinite(to)) {
      err.say('Give both times, in seconds from the start.');
      return null;
    }
    if (from < 0 || to <= from) {
      err.say('The end must come after the start.');
      return null;
    }
    if (to > this.duration + 0.001) {
      err.say(`The recording ends at ${fmtClock(this.duration)} (${this.duration} s).`);
      return null;
    }
    err.say('');
    return { from: round3(from), to: round3(to) };
  }

  renderMutes() {
    this.mutesNone.hidden = this.mutes.length > 0;
    this.muteList.replaceChildren(...this.mutes.map((m, n) => {
      const li = el('li', `Mute ${n + 1}: ${fmtClock(m.from)} to ${fmtClock(m.to)}`, 'redact-item');
      const del = button('Delete');
      del.setAttribute('aria-label', `Delete mute ${n + 1}`);
      del.addEventListener('click', () => {
        this.mutes.splice(n, 1);
        this.changed();
      });
      li.append(' ', del);
      return li;
    }));
  }

  // ---- boxes to blur ------------------------------------------------------------

  buildBoxes() {
    const section = el('fieldset', null, 'redact-section');
    section.append(el('legend', 'Boxes to blur'));
    section.append(el('p', 'Drag over the picture to draw a box. It applies from the current time to the end; '
      + 'change its times below. With the keyboard: add a box, then move it with the arrow keys and size it '
      + 'with Shift and the arrow keys.', 'hint'));
    const style = field('Style of new boxes', 'select');
    for (const [value, text] of Object.entries(STYLE)) {
      const o = el('option', text);
      o.value = value;
      style.input.append(o);
    }
    this.newStyle = style.input;
    const add = button('Add a box in the middle');
    add.addEventListener('click', () => {
      const b = this.addBox([0.35, 0.35, 0.3, 0.3]);
      b.node.focus();
    });
    const faces = el('label', null, 'choice');
    const facesBox = el('input');
    facesBox.type = 'checkbox';
    faces.append(facesBox, 'Blur faces automatically (the server finds them in every frame; not previewed here)');
    this.faces = facesBox;
    const list = el('ul', null, 'redact-list');
    this.boxList = list;
    const none = el('p', 'No boxes yet.', 'hint');
    this.boxesNone = none;
    const err = el('p', null, 'error');
    err.setAttribute('role', 'alert');
    this.boxesError = err;
    section.append(style.wrap, add, faces, err, none, list);
    return section;
  }

  /** A box over [x, y, w, h] from now to the end; returns it. */
  addBox(box) {
    const from = down(Math.min(this.video.currentTime, Math.max(0, this.duration - 0.1)));
    const b = { from, to: this.duration, box, style: this.newStyle.value, node: el('div', null, 'redact-box') };
    b.node.tabIndex = 0;
    b.node.setAttribute('role', 'group');
    b.node.addEventListener('keydown', (e) => this.nudge(b, e));
    this.frame.append(b.node);
    this.boxes.push(b);
    this.changed();
    return b;
  }

  /** Arrow keys move a focused box, Shift and arrow keys resize it, Delete removes it. */
  nudge(b, e) {
    const d = { ArrowLeft: [-STEP, 0], ArrowRight: [STEP, 0], ArrowUp: [0, -STEP], ArrowDown: [0, STEP] }[e.key];
    if (e.key === 'Delete' || e.key === 'Backspace') {
      e.preventDefault();
      this.removeBox(b);
      return;
    }
    if (!d) return;
    e.preventDefault();
    let [x, y, w, h] = b.box;
    if (e.shiftKey) {
      w = clamp(w + d[0], MIN_BOX, 1 - x);
      h = clamp(h + d[1], MIN_BOX, 1 - y);
    } else {
      x = clamp(x + d[0], 0, 1 - w);
      y = clamp(y + d[1], 0, 1 - h);
    }
    b.box = [x, y, w, h].map(round3);
    this.changed();
  }

  removeBox(b) {
    b.node.remove();
    this.boxes.splice(this.boxes.indexOf(b), 1);
    this.changed();
  }

  renderBoxes() {
    this.boxesNone.hidden = this.boxes.length > 0;
    const pct = (f) => `${Math.round(f * 100)}%`;
    this.boxList.replaceChildren(...this.boxes.map((b, n) => {
      const name = `Box ${n + 1}`;
      const [x, y, w, h] = b.box;
      place(b.node, b.box);
      b.node.setAttribute('aria-label', `${name}: ${STYLE[b.style].toLowerCase()} from ${fmtClock(b.from)} to `
        + `${fmtClock(b.to)}. Arrow keys move it, Shift and arrow keys size it, Delete removes it.`);
      const li = el('li', null, 'redact-item');
      li.append(el('p', `${name}: ${pct(w)} by ${pct(h)} of the picture, ${pct(x)} from the left and ${pct(y)} `
        + 'from the top', 'redact-item-name'));
      const from = secondsField(`${name} from (seconds)`, this.duration);
      const to = secondsField(`${name} to (seconds)`, this.duration);
      from.input.value = String(b.from);
      to.input.value = String(b.to);
      const style = field(`${name} style`, 'select');
      for (const [value, text] of Object.entries(STYLE)) {
        const o = el('option', text);
        o.value = value;
        o.selected = value === b.style;
        style.input.append(o);
      }
      const err = errorFor(to.input);
      const times = () => {
        const range = this.checkedRange(from.input.value, to.input.value, err);
        if (!range) return;
        Object.assign(b, range);
        this.drawMarks();
        this.preview();
      };
      from.input.addEventListener('change', times);
      to.input.addEventListener('change', times);
      style.input.addEventListener('change', () => {
        b.style = style.input.value;
        this.preview();
      });
      const del = button('Delete');
      del.setAttribute('aria-label', `Delete ${name.toLowerCase()}`);
      del.addEventListener('click', () => this.removeBox(b));
      const row = el('div', null, 'redact-row');
      row.append(from.wrap, to.wrap, style.wrap, del);
      li.append(row, err.p);
      return li;
    }));
  }

  // ---- running it ---------------------------------------------------------------

  buildRun() {
    const form = el('form', null, 'redact-run');
    form.noValidate = true; // our own messages, next to the field
    const reason = field('Reason for the redaction (kept in the audit log)');
    reason.input.maxLength = 1000;
    reason.input.autocomplete = 'off';
    reason.input.required = true;
    this.reason = reason.input;
    const reasonErr = errorFor(reason.input);
    this.reasonError = reasonErr;
    if (this.viewReason) reason.input.addEventListener('change', () => { if (reason.input.value.trim()) this.load(); });
    const run = el('button', 'Run redaction', 'primary');
    run.type = 'submit';
    this.runButton = run;
    const formErr = el('p', null, 'error');
    formErr.setAttribute('role', 'alert');

    // The job: its progress, what it is doing, why it failed; Cancel while it runs.
    const job = el('div', null, 'redact-job');
    job.hidden = true;
    const bar = el('progress');
    bar.id = uid('progress');
    bar.max = 1;
    const barLabel = el('label', 'Redaction progress');
    barLabel.htmlFor = bar.id;
    const status = el('p', null, 'redact-status');
    status.setAttribute('role', 'status');
    const failed = el('p', null, 'error');
    failed.setAttribute('role', 'alert');
    const cancel = button('Cancel the redaction', 'danger');
    cancel.addEventListener('click', () => this.cancel());
    job.append(barLabel, bar, status, failed, cancel);
    Object.assign(this, { jobBox: job, bar, status, failed, cancelButton: cancel });

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      formErr.textContent = '';
      this.boxesError.textContent = '';
      this.mutesError.say('');
      const why = reason.input.value.trim();
      if (!why) {
        reasonErr.say('Give the reason for this redaction: it is kept in the audit log.');
        reason.input.focus();
        return;
      }
      reasonErr.say('');
      run.disabled = true;
      const r = await api('POST', `${this.url(this.recording.id)}/redactions`, this.request(why));
      if (!r.ok) {
        run.disabled = false;
        const message = errorText(r, 'The redaction was not started');
        const fields = r.data?.error?.fields || [];
        if (fields.includes('reason')) reasonErr.say(message);
        else if (fields.includes('mute') && r.data.error.code !== 'nothing_to_redact') this.mutesError.say(message);
        else if (fields.includes('blur')) this.boxesError.textContent = message;
        else formErr.textContent = message;
        return;
      }
      this.follow(r.data);
    });
    form.append(reason.wrap, reasonErr.p, run, formErr, job);
    return form;
  }

  /** The request the server takes: what is marked now. */
  request(reason) {
    return {
      reason,
      mute: this.mutes.map((m) => ({ from: m.from, to: m.to })),
      blur: this.boxes.map((b) => ({ from: b.from, to: b.to, box: b.box, style: b.style })),
      blur_faces: this.faces.checked,
    };
  }

  /** A job of this recording still under way when the editor opens: show it. */
  async resumeLatest() {
    const r = await api('GET', `${this.url(this.recording.id)}/redactions`);
    const latest = r.ok ? r.data?.redactions?.[0] : null;
    if (latest && !this.job && !this.closed && ['queued', 'running'].includes(latest.status)) this.follow(latest);
  }

  follow(job) {
    this.job = job;
    this.show(job);
    clearTimeout(this.pollTimer);
    if (['queued', 'running'].includes(job.status)) this.pollTimer = setTimeout(() => this.poll(), POLL_MS);
  }

  async poll() {
    if (this.closed || !this.job) return;
    const r = await api('GET', `${this.url(this.recording.id)}/redactions/${encodeURIComponent(this.job.id)}`);
    if (this.closed) return;
    if (r.ok) this.follow(r.data);
    else this.pollTimer = setTimeout(() => this.poll(), POLL_MS);
  }

  async cancel() {
    if (!this.job) return;
    this.cancelButton.disabled = true;
    const r = await api('POST', `${this.url(this.recording.id)}/redactions/${encodeURIComponent(this.job.id)}/cancel`);
    if (this.closed) return;
    if (r.ok) this.follow(r.data);
    else {
      this.failed.textContent = errorText(r, 'Not cancelled');
      this.poll();
    }
  }

  /** The job as it stands: the bar, the words, and the copy once made. */
  show(job) {
    const under = ['queued', 'running'].includes(job.status);
    this.jobBox.hidden = false;
    this.runButton.disabled = under;
    this.cancelButton.hidden = !under;
    this.cancelButton.disabled = false;
    if (job.status === 'queued') this.bar.removeAttribute('value'); // waiting: no progress to show
    else this.bar.value = job.status === 'done' ? 1 : clamp(job.progress || 0, 0, 1);
    const pct = Math.floor(clamp(job.progress || 0, 0, 1) * 100);
    const left = job.eta_s == null ? '' : `, about ${Math.max(1, Math.ceil(job.eta_s))} s left`;
    this.status.textContent = {
      queued: 'Queued: waiting for the redaction process to start.',
      running: `Running: ${pct}% done${left}.`,
      done: 'Done: the redacted copy plays beside the original and is listed with the recordings.',
      failed: 'Failed: no redacted copy was made.',
      cancelled: 'Cancelled: no redacted copy was made.',
    }[job.status] || job.status;
    this.jobBox.dataset.status = job.status;
    this.failed.textContent = job.status === 'failed' ? job.error || 'The server gave no reason.' : '';
    if (job.status === 'done' && job.recording_id && this.shownCopy !== job.recording_id) {
      this.shownCopy = job.recording_id;
      this.copy.hidden = false;
      this.bothButton.hidden = false;
      this.copyVideo.src = this.playbackUrl(job.recording_id);
      this.copyVideo.play().catch(() => {});
      this.onDone(job);
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.pollTimer);
    this.resized.disconnect();
    for (const v of [this.video, this.copyVideo]) {
      v.pause();
      v.removeAttribute('src');
      v.load();
    }
    this.node.remove();
    this.onClose();
  }
}

/** Lay ``node`` over [x, y, w, h] of the frame (fractions: percentages of the frame). */
function place(node, [x, y, w, h]) {
  Object.assign(node.style, { left: `${x * 100}%`, top: `${y * 100}%`, width: `${w * 100}%`, height: `${h * 100}%` });
}
