// console.js: the officer's console, served at /console.
import { Call, stopStream, videoConstraints } from '/static/call.js';
import { ChatPanel } from '/static/chat.js';
import { Gallery } from '/static/gallery.js';
import { GuestPanel } from '/static/console-guests.js';
import { showLocation } from '/static/location.js';
import { roleText } from '/static/people.js';
import { ScreenButton } from '/static/screen.js';
import { $, api, copyField, deliveryNote, el, errorText, session, signInOut } from '/static/staff.js';

// The call handler's eligibility questions, and what a No means.
const QUESTIONS = {
  adult_or_carer_present: 'the victim is under 18 and no parent or carer will join',
  offender_absent: 'the offender is present',
  safe_location: 'the victim is not somewhere safe to talk',
  consent: 'the victim does not consent to a video call',
};

let listTimer = null;
let current = null;   // the open call: {c, call, stream, state, startedAt, timer}

// ---- helpers -------------------------------------------------------------

function show(view) {
  for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== `v-${view}`;
  $('logout').hidden = view === 'login';
  $(`v-${view}`).querySelector('h1')?.focus();
}

const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString([], { dateStyle: 'short', timeStyle: 'short' }) : '–');

function fmtDuration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600);
  const m = Math.floor(s / 60) % 60;
  const pad = (n) => String(n).padStart(2, '0');
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}


// ---- sign in and out -----------------------------------------------------

signInOut({
  onSignedIn() {
    show('home');
    refresh();
    clearInterval(listTimer);
    listTimer = setInterval(refresh, 5000);
    openLinked();
  },
  onSignedOut() {
    if (current) endCall();
    clearInterval(listTimer);
    show('login');
  },
});

// /console#c=<id> (the queue board's "Start video call"): open that call at once.
async function openLinked() {
  const id = /^#c=([0-9a-f-]{36})$/i.exec(location.hash)?.[1];
  if (!id) return;
  history.replaceState(null, '', location.pathname);
  const r = await api('GET', `/api/consultations/${id}`);
  if (r.ok && r.data.status !== 'closed') openCall(r.data);
  else $('list-error').textContent = r.ok ? 'That call is closed.' : errorText(r, 'Could not open that call.');
}

// ---- list ----------------------------------------------------------------

async function refresh() {
  if (!session.csrf || current) return; // the list is hidden during a call
  const r = await api('GET', '/api/consultations');
  $('list-error').textContent = r.ok ? '' : errorText(r, 'Could not load consultations.');
  if (!r.ok) return;
  // Open ones first, oldest first (officers self-dispatch oldest first).
  const list = (r.data.consultations || []).sort((a, b) =>
    (a.status === 'closed') - (b.status === 'closed') || String(a.created_at).localeCompare(b.created_at));
  const focused = document.activeElement?.dataset?.join; // keep focus across redraws
  $('list-body').replaceChildren(...list.map(row));
  if (focused) document.querySelector(`[data-join="${CSS.escape(focused)}"]`)?.focus();
  $('list-empty').hidden = list.length > 0;
}

function row(c) {
  const tr = el('tr');
  const end = c.arrived_at || c.closed_at || (c.status === 'closed' ? null : Date.now());
  const waited = end ? fmtDuration(new Date(end) - new Date(c.created_at)) : '–';
  for (const text of [c.cad_ref, c.status, fmtTime(c.created_at), waited]) tr.append(el('td', text));
  const td = el('td');
  if (c.status !== 'closed') {
    const b = el('button', 'Join');
    b.type = 'button';
    b.dataset.join = c.id;
    b.setAttribute('aria-label', `Join ${c.cad_ref}`);
    b.addEventListener('click', () => openCall(c));
    td.append(b);
  }
  const recordings = el('button', 'Recordings'); // console-recordings.js opens the page
  recordings.type = 'button';
  recordings.dataset.recordings = c.id;
  recordings.dataset.ref = c.cad_ref;
  recordings.setAttribute('aria-label', `Recordings of ${c.cad_ref}`);
  td.append(recordings);
  tr.append(td);
  return tr;
}

// ---- create --------------------------------------------------------------

$('create-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const f = e.target;
  const fd = new FormData(f);
  const say = (text) => { $('create-error').textContent = text; };
  const victim = {};
  for (const k of ['name', 'phone', 'email']) if (fd.get(k).trim()) victim[k] = fd.get(k).trim();
  const no = Object.keys(QUESTIONS).filter((q) => fd.get(q) !== 'yes');
  if (no.length) {
    return say(`Not eligible for a video response: ${no.map((q) => QUESTIONS[q]).join('; ')}. `
      + 'Offer an officer in person instead.');
  }
  const notify = fd.get('notify');
  if (notify === 'sms' && !victim.phone) return say('Enter a phone number to send the link by SMS.');
  if (notify === 'email' && !victim.email) return say('Enter an email address to send the link by email.');
  const eligibility = Object.fromEntries(Object.keys(QUESTIONS).map((q) => [q, true]));
  const r = await api('POST', '/api/consultations', { cad_ref: fd.get('cad_ref').trim(), victim, eligibility, notify });
  if (r.status !== 201) return say(errorText(r, 'Could not create the link.'));
  say('');
  f.reset();
  showCreated(r.data);
  refresh();
});

function showCreated(c) {
  $('created').hidden = false;
  $('created-ref').textContent = c.cad_ref;
  $('join-url').value = c.join_url;
  $('expires').textContent = fmtTime(c.expires_at);
  $('copy-status').textContent = '';
  const m = c.message;
  $('outbox').replaceChildren(deliveryNote(m, 'the victim', fmtTime), ...(m ? [el('blockquote', m.body)] : []),
  // The server keeps no copy of the link (only its hash), so this is the one chance to see it.
  el('p', 'EVR keeps no copy of this link: copy it or read it to the victim before you leave this screen.', 'hint'));
  $('created-h').focus();
}

$('copy').addEventListener('click', () => copyField($('join-url'), $('copy-status')));

// ---- call ----------------------------------------------------------------

const CONN_TEXT = {
  connecting: 'Connecting…', connected: 'Connected', reconnecting: 'Reconnecting…',
  network: 'Reconnecting after a network change…', offline: 'Offline',
  retrying: 'Connection lost, retrying…', gaveup: 'Could not reconnect',
};
const gallery = new Gallery($('stage'), $('tile-main'), $('stage-msg'));
const guests = new GuestPanel();
const screenShare = new ScreenButton($('share-screen'), (text) => { $('screen-note').textContent = text; });
let chat = null;

async function openCall(c) {
  if (current) return;
  const call = new Call(`/api/consultations/${encodeURIComponent(c.id)}/ws`);
  $('v-call').dataset.consultation = c.id; // for the uploads panel (console-uploads.js)
  $('remote').srcObject = call.remote;
  $('remote').play().catch(() => {}); // inside the click: allowed to play sound
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: videoConstraints('user') });
  } catch {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true }).catch((err) => {
      $('list-error').textContent = `Camera and microphone unavailable: ${err.name}`;
    });
    if (!stream) return;
  }
  current = { c, call, stream, state: null, conn: 'connecting', quality: null, startedAt: Date.now() };
  const cur = current;
  chat = new ChatPanel($('console-chat'), {
    send: (text) => call.chat(text),
    hint: 'No messages yet. Messages are part of the record of this call.',
  });
  screenShare.attach(call);
  showLocation($('location'), null);
  guests.open(c.id);
  $('call-ref').textContent = c.cad_ref;
  $('self').srcObject = stream;
  for (const id of ['mute', 'pause', 'close', 'share-screen']) $(id).disabled = false;
  $('mute').textContent = 'Mute';
  $('call-msg').textContent = '';
  $('participants').replaceChildren();
  $('call-status').textContent = c.status;
  $('arrived').textContent = '–';
  $('quality').textContent = '–';
  $('timer').textContent = '0:00';
  current.timer = setInterval(tick, 1000);

  call.addEventListener('conn', (e) => {
    current.conn = e.detail;
    $('conn').textContent = CONN_TEXT[e.detail];
    $('retry').hidden = e.detail !== 'gaveup';
    renderStage();
  });
  call.addEventListener('state', (e) => { current.state = e.detail; renderState(); loadDetails(); guests.refresh(); });
  call.addEventListener('remote', () => $('remote').play().catch(() => {}));
  call.addEventListener('participants', (e) => { if (cur === current) gallery.render(e.detail); });
  call.addEventListener('chat', (e) => chat.add(e.detail));
  call.addEventListener('error', (e) => {
    if (String(e.detail.code).startsWith('chat_')) chat.refused(e.detail.message);
    else $('call-msg').textContent = e.detail.message;
  });
  call.addEventListener('fatal', (e) => { $('conn').textContent = `Refused: ${e.detail.message}`; });
  call.addEventListener('refused', loadDetails); // closed elsewhere, or no longer ours
  call.addEventListener('closed', markClosed);
  call.addEventListener('replaced', () => markEnded('Left: you joined this call from another window.'));
  show('call');
  call.start(stream);
  loadDetails();
  loadChat(cur);
}

/** The messages so far (opening a call already going). */
async function loadChat(cur) {
  const r = await api('GET', `/api/consultations/${encodeURIComponent(cur.c.id)}/chat`);
  if (r.ok && cur === current) chat.addAll(r.data?.messages);
}

// Every second: the call timer and the connection quality.
async function tick() {
  const cur = current;
  $('timer').textContent = fmtDuration(Date.now() - cur.startedAt);
  const q = await cur.call.quality().catch(() => null);
  if (cur !== current) return;
  cur.quality = q;
  $('quality').textContent = q ? [
    { good: 'Good', fair: 'Fair', poor: 'Poor' }[q.level],
    q.rttMs == null ? null : `${q.rttMs} ms`,
    `${q.lossPct} % loss`,
    q.fps ? `video ${q.width}×${q.height} at ${q.fps} fps` : 'no video',
  ].filter(Boolean).join(', ') : '–';
  renderStage();
}

function renderState() {
  const s = current.state;
  $('call-status').textContent = s.status;
  $('rec').hidden = !s.recording;
  $('pause').textContent = s.status === 'paused' ? 'Resume' : 'Pause';
  $('participants').replaceChildren(...(s.participants || []).map((p) =>
    el('li', `${roleText(p.role)}: ${p.connected ? 'connected' : 'not connected'}${p.you ? ' (you)' : ''}${p.name && !p.you ? ` (${p.name})` : ''}`)));
  if ('location' in s) showLocation($('location'), s.location);
  renderStage();
}

/** What the officer needs to know about the big picture, over it. */
function renderStage() {
  const s = current?.state;
  const victim = s?.participants?.find((p) => p.role === 'victim');
  const message = !s || current.conn !== 'connected' ? ''
    : s.status === 'paused' ? 'Paused: no audio or video is passed on.'
      : !victim?.connected ? 'Waiting for the victim to join.'
        : current.quality && !current.quality.fps ? 'No video from the victim (camera off or sound only).' : '';
  $('stage-msg').textContent = message;
  $('stage-msg').hidden = !message;
  $('remote').classList.toggle('dim', Boolean(message));
}

async function loadDetails() {
  const cur = current;
  if (!cur) return;
  const r = await api('GET', `/api/consultations/${encodeURIComponent(cur.c.id)}`);
  if (cur !== current) return;
  if (!r.ok) {
    if (r.status === 404) markEnded('This consultation is no longer available to you.');
    return;
  }
  $('arrived').textContent = r.data.arrived_at
    ? new Date(r.data.arrived_at).toLocaleTimeString([], { timeStyle: 'medium' }) : '–';
  if (r.data.location && !current.state?.location) showLocation($('location'), r.data.location);
  if (r.data.status === 'closed') markClosed();
}

function markClosed() {
  if (markEnded('This link is closed and can never be used again.')) $('call-status').textContent = 'closed';
}

/** This window's part in the call is over: say why, keep the view for the record. */
function markEnded(text) {
  if (!current || current.ended) return false;
  current.ended = true;
  current.call.leave();
  stopStream(current.stream);
  clearInterval(current.timer);
  $('conn').textContent = 'Ended';
  $('quality').textContent = '–';
  $('stage-msg').hidden = true;
  $('rec').hidden = true;
  $('retry').hidden = true;
  for (const id of ['mute', 'pause', 'close', 'share-screen']) $(id).disabled = true;
  $('screen-note').textContent = '';
  guests.ended();
  $('call-msg').textContent = text;
  return true;
}

function endCall() {
  guests.close();
  current.call.leave();
  stopStream(current.stream);
  clearInterval(current.timer);
  current = null;
}

$('mute').addEventListener('click', () => {
  const track = current.stream.getAudioTracks()[0];
  if (!track) return;
  track.enabled = !track.enabled;
  $('mute').textContent = track.enabled ? 'Mute' : 'Unmute';
});
$('pause').addEventListener('click', () => {
  if (current.state?.status === 'paused') current.call.resume(); else current.call.pause();
});
$('retry').addEventListener('click', () => current.call.retry());
$('close').addEventListener('click', () => {
  $('confirm').returnValue = ''; // Escape must never count as a stale 'close'
  $('confirm').showModal();
});
$('confirm').addEventListener('close', async () => {
  if ($('confirm').returnValue !== 'close' || !current) return;
  const r = await api('POST', `/api/consultations/${encodeURIComponent(current.c.id)}/close`, {});
  if (r.ok) markClosed(); else $('call-msg').textContent = errorText(r, 'Could not close the link.');
});
$('back').addEventListener('click', () => {
  endCall();
  show('home');
  refresh();
});

show('login');
