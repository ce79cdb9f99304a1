// victim.js: the victim's page, served at /j/<token>.
import { Call, stopStream, videoConstraints } from '/static/call.js';

const $ = (id) => document.getElementById(id);
const token = location.pathname.split('/')[2] || '';
const call = new Call(`/j/${token}/ws`);

let stream = null;     // local camera and microphone
let facing = 'user';   // front camera first
let audioOnly = false;
let camOff = false;
let muted = false;
let conn = 'connecting';
let state = null;      // last server 'state' message

function show(name) {
  for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== `s-${name}`;
  $(`s-${name}`).querySelector('h1')?.focus();
}

function setText(id, text) {
  if ($(id).textContent !== text) $(id).textContent = text; // no repeated announcements
}

// ---- camera and microphone ------------------------------------------------

function getMedia(video) {
  if (!navigator.mediaDevices?.getUserMedia) throw Object.assign(new Error(), { name: 'Unsupported' });
  return navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true },
    video: video ? videoConstraints(facing) : false,
  });
}

function mediaHelp(err, video) {
  const noCamera = video && ['NotFoundError', 'OverconstrainedError'].includes(err.name);
  $('join-audio').hidden = !noCamera;
  setText('media-help', {
    NotAllowedError: 'The camera or microphone is blocked. Tap the icon next to the web address (a padlock or "aA"), allow Camera and Microphone, then tap "Check camera and microphone" again. You may need to reload the page.',
    NotReadableError: 'Another app is using the camera or microphone. Close it, then try again.',
    Unsupported: 'This browser cannot use the camera here. Try opening the link in Chrome or Safari.',
  }[err.name] || (noCamera ? 'We could not find a camera. You can still join with sound only.'
    : err.name === 'NotFoundError' ? 'We could not find a microphone. You need one to join.'
      : `The camera or microphone could not start (${err.name}). Please try again.`));
}

async function acquire() {
  if (stream?.active) return true;
  try {
    stream = await getMedia(!audioOnly);
    setText('media-help', '');
    showSelf();
    return true;
  } catch (err) {
    mediaHelp(err, !audioOnly);
    return false;
  }
}

function showSelf() {
  const video = new MediaStream(stream ? stream.getVideoTracks() : []);
  for (const id of ['preview', 'self']) {
    $(id).srcObject = video;
    $(id).classList.toggle('mirror', facing === 'user');
  }
  $('preview-box').hidden = !video.getTracks().length;
  $('self').hidden = !video.getTracks().length;
}

// Replace one kind of track (new camera, or a track the phone took away).
async function reacquire(kind) {
  stream.getTracks().forEach((t) => t.kind === kind && t.stop());
  const s = await navigator.mediaDevices.getUserMedia(kind === 'video' ? { video: videoConstraints(facing) } : { audio: true });
  const track = s.getTracks()[0];
  track.enabled = kind === 'video' ? !camOff : !muted;
  await call.setTrack(kind, track);
  showSelf();
}

// ---- joining and leaving -------------------------------------------------

async function join() {
  // Start playback inside this tap so the officer can be heard (autoplay rules).
  $('remote').srcObject = call.remote;
  $('remote').play().catch(() => {});
  if (!(await acquire())) return show('intro');
  camOff = muted = false;
  updateButtons();
  show('call');
  call.start(stream);
  const devices = await navigator.mediaDevices.enumerateDevices().catch(() => []);
  const cams = devices.filter((d) => d.kind === 'videoinput');
  $('flip').hidden = cams.length < 2;
}

function stopAll() {
  call.leave();
  stopStream(stream);
  stream = null;
}

function quickExit() {
  try { stopAll(); } finally { location.replace('/static/neutral.html'); }
}

// ---- status --------------------------------------------------------------

function render() {
  const officer = state?.participants?.some((p) => p.role !== 'victim' && p.connected);
  const paused = state?.status === 'paused';
  setText('status', {
    connecting: 'Connecting…',
    reconnecting: 'Reconnecting after a network change…',
    retrying: 'Connection lost, retrying…',
    gaveup: 'Could not reconnect.',
  }[conn] || (paused ? 'On a break. Tap "Rejoin" when you are ready.'
    : officer || state?.status === 'live' ? 'Connected' : 'Waiting for the officer'));
  $('retry').hidden = conn !== 'gaveup';
  $('rec').hidden = !state?.recording;
  $('pause').textContent = paused ? 'Rejoin' : 'Take a break';
}

function updateButtons() {
  $('mute').textContent = muted ? 'Unmute' : 'Mute';
  $('cam').textContent = camOff ? 'Camera on' : 'Camera off';
  $('cam').disabled = audioOnly;
  $('flip').disabled = audioOnly;
  $('audio-only').setAttribute('aria-pressed', String(audioOnly));
}

call.addEventListener('conn', (e) => { conn = e.detail; render(); });
call.addEventListener('state', (e) => { state = e.detail; render(); });
call.addEventListener('remote', () => $('remote').play().catch(() => {}));
call.addEventListener('error', (e) => console.warn('server:', e.detail.code, e.detail.message));
call.addEventListener('closed', () => { stopAll(); show('ended'); });
call.addEventListener('fatal', (e) => {
  stopAll();
  setText('error-text', `The call could not continue: ${e.detail.message}`);
  show('error');
});

// ---- buttons -------------------------------------------------------------

$('quick-exit').addEventListener('click', (e) => { e.preventDefault(); quickExit(); });
let lastEscape = -Infinity;
addEventListener('keydown', (e) => {
  if (e.key !== 'Escape') return;
  if (e.timeStamp - lastEscape < 1500) quickExit();
  lastEscape = e.timeStamp;
});

$('check').addEventListener('click', () => { stopStream(stream); stream = null; acquire(); });
$('join').addEventListener('click', join);
$('join-audio').addEventListener('click', () => { audioOnly = true; join(); });
$('rejoin').addEventListener('click', join);
$('retry').addEventListener('click', () => call.retry());
$('reload').addEventListener('click', () => location.reload());

$('mute').addEventListener('click', () => {
  muted = !muted;
  stream?.getAudioTracks().forEach((t) => { t.enabled = !muted; });
  updateButtons();
});

$('cam').addEventListener('click', () => {
  camOff = !camOff;
  stream?.getVideoTracks().forEach((t) => { t.enabled = !camOff; });
  updateButtons();
});

$('flip').addEventListener('click', async () => {
  facing = facing === 'user' ? 'environment' : 'user';
  try {
    await reacquire('video');
  } catch {
    facing = facing === 'user' ? 'environment' : 'user';
    setText('note', 'Could not switch camera.');
    reacquire('video').catch(() => {});
  }
});

$('audio-only').addEventListener('click', async () => {
  audioOnly = !audioOnly;
  setText('note', '');
  try {
    if (audioOnly) {
      stream.getVideoTracks().forEach((t) => t.stop());
      await call.setTrack('video', null);
      showSelf();
    } else await reacquire('video');
  } catch {
    audioOnly = true;
    setText('note', 'The camera could not start. You are still connected with sound.');
  }
  updateButtons();
});

$('pause').addEventListener('click', () => {
  if (state?.status === 'paused') call.resume(); else call.pause();
});

$('leave').addEventListener('click', () => { stopAll(); show('left'); });

// Phones (mobile Safari especially) may end our tracks during a phone call or
// app switch: restore them when the page is visible again.
document.addEventListener('visibilitychange', async () => {
  if (document.hidden || !call.active || !stream) return;
  $('remote').play().catch(() => {});
  try {
    if (stream.getAudioTracks().every((t) => t.readyState === 'ended')) await reacquire('audio');
    if (!audioOnly && stream.getVideoTracks().every((t) => t.readyState === 'ended')) await reacquire('video');
  } catch {
    setText('note', 'Your camera or microphone stopped. Tap "Leave", then "Rejoin".');
  }
});
