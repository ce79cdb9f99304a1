// victim.js: the victim's page, served at /j/<token>, which is also a guest's page
// (a carer, an interpreter, an appropriate adult, a support worker: the server says
// which in <body data-link-role>). Opening it binds nothing: the first button pressed
// claims the link for this browser (POST /j/<token>/claim).
import { Call, stopStream, videoConstraints } from '/static/call.js';
import { ChatPanel } from '/static/chat.js';
import { Gallery } from '/static/gallery.js';
import { $, getJSON, linkURL, postJSON } from '/static/link.js';
import { offerLocation } from '/static/location.js';
import { STAFF_ROLES, roleText } from '/static/people.js';
import { ScreenButton } from '/static/screen.js';

const call = new Call(linkURL('ws'));

// ---- who this page is for --------------------------------------------------

const role = document.body.dataset.linkRole || 'victim';
const isVictim = role === 'victim';
// The quick exit is for the person who may be at risk where they are: the victim,
// and a carer who is with them. An interpreter or support worker joins from work.
const quickExitShown = ['victim', 'carer'].includes(role);

const GUEST_TEXT = {
  carer: ['Join a police video call as a parent or carer',
    'You have been invited to a police video call as the parent or carer of the person the police are helping.'],
  interpreter: ['Join a police video call as the interpreter',
    'You have been invited to a police video call as the interpreter.'],
  appropriate_adult: ['Join a police video call as the appropriate adult',
    'You have been invited to a police video call as the appropriate adult.'],
  support_worker: ['Join a police video call as a support worker',
    'You have been invited to a police video call as a support worker.'],
};

function wording() {
  if (!quickExitShown) {
    document.querySelector('.exit-bar')?.remove();
    $('exit-hint')?.remove();
  }
  if (isVictim) return;
  const [heading, invited] = GUEST_TEXT[role] || [`Join a police video call (${roleText(role)})`, 'You have been invited to a police video call.'];
  $('intro-h').textContent = heading;
  $('intro-who').textContent = `${invited} You do not need an app: it works in this browser.`;
  $('guest-role').textContent = `You are joining as: ${roleText(role)}. Everyone in the call sees your name and role. `
    + 'The call is recorded, like a police body-worn camera.';
  $('guest-role').hidden = false;
  $('uploads').remove();     // evidence comes from the victim's own link
  $('statement').remove();
  $('pause').hidden = true;  // a break is the victim's or the police's to take (the server refuses a guest's)
  $('call-h').textContent = `In the police video call, as ${roleText(role).toLowerCase()}`;
}
wording();

const gallery = new Gallery($('stage'), $('tile-main'), $('stage-msg'));
const chat = new ChatPanel($('chat'), {
  send: (text) => call.chat(text),
  open: false,
  hint: 'No messages yet. You can write here, for example to spell a name, an address or a reference number.',
});
const place = isVictim ? offerLocation($('location'), (loc) => call.shareLocation(loc)) : null;
$('location').hidden = !isVictim;

let stream = null;     // local camera and microphone
let audioOnly = false; // sound only: no video either way
let camOff = false;
let muted = false;
let conn = 'connecting';
let state = null;      // last server 'state' message
let meter = null;      // microphone level meter of the check
let qualityTimer = null;

function show(name) {
  for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== `s-${name}`;
  $(`s-${name}`).querySelector('h1')?.focus();
}

function setText(id, text) {
  if ($(id).textContent !== text) $(id).textContent = text; // no repeated announcements
}

// ---- the link ------------------------------------------------------------

/** The link's HTTP status now (200 while it is open for this browser), 0 offline. */
async function linkStatus() {
  try {
    const r = await fetch(location.pathname, { method: 'HEAD', cache: 'no-store', credentials: 'same-origin' });
    return r.status;
  } catch {
    return 0;
  }
}

/** The link was closed, expired or taken: let the server's page say so and what to do. */
function linkRefused() {
  stopAll();
  location.replace(location.href);
}

/** Claim the link for this browser: the victim pressed a button, so this is a person,
 * not a link preview (opening the page binds nothing). The first browser to claim it
 * keeps it; pressing again, or rejoining, is fine. True when the link is ours; on a
 * refusal (403 in use elsewhere, 410 closed or expired, 404) the server's page says
 * why; false offline, with a note in `where`. */
async function claim(where) {
  let r;
  try {
    r = await fetch(linkURL('claim'), { method: 'POST', cache: 'no-store', credentials: 'same-origin' });
  } catch {
    setText(where, 'We could not reach the appointment. Check your Wi-Fi or mobile data, then try again.');
    return false;
  }
  if (r.ok) return true;
  if ([403, 404, 410, 429].includes(r.status)) linkRefused();
  else setText(where, 'Something went wrong. Please try again in a minute.');
  return false;
}

// ---- camera and microphone ------------------------------------------------

const AUDIO = { echoCancellation: true, noiseSuppression: true };

function getMedia(video) {
  if (!navigator.mediaDevices?.getUserMedia) throw Object.assign(new Error(), { name: 'Unsupported' });
  return navigator.mediaDevices.getUserMedia({ audio: AUDIO, video: video ? videoConstraints('user') : false });
}

function mediaHelp(err, video) {
  const noCamera = video && ['NotFoundError', 'OverconstrainedError'].includes(err.name);
  if (noCamera) $('join-audio').hidden = false;
  setText('media-help', {
    NotAllowedError: 'The camera or microphone is blocked. Tap the icon next to the web address (a padlock or "aA"), '
      + 'allow Camera and Microphone, then tap "Check camera and microphone" again. You may need to reload the page. '
      + 'If you cannot allow them, call 101 and ask for an officer to contact you another way.',
    NotReadableError: 'Another app is using the camera or microphone. Close it, then try again.',
    SecurityError: 'This browser does not allow the camera here. Try opening the link in Chrome or Safari.',
    Unsupported: 'This browser cannot use the camera here. Try opening the link in Chrome or Safari.',
  }[err.name] || (noCamera ? 'We could not find a camera. You can still join with sound only.'
    : err.name === 'NotFoundError' ? 'We could not find a microphone. You need one to join. If you have none, call 101.'
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
  const track = stream?.getVideoTracks()[0];
  const video = new MediaStream(track ? [track] : []);
  // Mirror the front camera only, as a mirror would.
  const mirror = track?.getSettings?.().facingMode !== 'environment';
  for (const id of ['preview', 'self']) {
    $(id).srcObject = video;
    $(id).classList.toggle('mirror', mirror);
  }
  $('preview-box').hidden = !track;
  $('self').hidden = !track || camOff;
}

/** Replace the local track of one kind (another camera, or one the phone took away). */
async function replaceTrack(kind, constraints) {
  stream.getTracks().forEach((t) => t.kind === kind && t.stop());
  const s = await navigator.mediaDevices.getUserMedia({ [kind]: constraints });
  const track = s.getTracks()[0];
  track.enabled = kind === 'video' ? !camOff : !muted;
  await call.setTrack(kind, track);
  showSelf();
}

const cameras = async () =>
  (await navigator.mediaDevices.enumerateDevices().catch(() => [])).filter((d) => d.kind === 'videoinput');

/** Front to back camera on a phone; elsewhere (no facing information) the next camera. */
async function switchCamera() {
  const settings = stream.getVideoTracks()[0]?.getSettings() || {};
  const want = settings.facingMode === 'environment' ? 'user' : 'environment';
  try {
    await replaceTrack('video', { ...videoConstraints(want), facingMode: { exact: want } });
  } catch {
    const list = await cameras();
    const next = list[(list.findIndex((d) => d.deviceId === settings.deviceId) + 1) % list.length];
    try {
      await replaceTrack('video', videoConstraints(null, next?.deviceId));
    } catch {
      setText('note', 'Could not switch camera.');
      await replaceTrack('video', videoConstraints(null, settings.deviceId)).catch(() => {});
    }
  }
}

// ---- the check before joining ---------------------------------------------

function startMeter() {
  stopMeter();
  const track = stream?.getAudioTracks()[0];
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!track || !Context) return;
  const ctx = new Context();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const tick = () => {
    analyser.getFloatTimeDomainData(samples);
    const rms = Math.sqrt(samples.reduce((sum, x) => sum + x * x, 0) / samples.length);
    $('mic-level').value = Math.min(1, rms * 5);
    if (rms > 0.01) setText('chk-mic', 'Microphone: working. We can hear you.');
  };
  meter = { ctx, timer: setInterval(tick, 100) };
}

function stopMeter() {
  if (!meter) return;
  clearInterval(meter.timer);
  meter.ctx.close().catch(() => {});
  meter = null;
  $('mic-level').value = 0;
}

/** Reach the server a few times over the link itself: it is up, the link is still
 * valid, and the round trip says how good the connection is. */
async function checkConnection() {
  setText('chk-net', 'Connection: checking…');
  if (navigator.onLine === false) return setText('chk-net', 'Connection: you are offline. Connect to Wi-Fi or mobile data.');
  const times = [];
  for (let i = 0; i < 3; i += 1) {
    const started = performance.now();
    const status = await linkStatus();
    if (status === 0) return setText('chk-net', 'Connection: we could not reach the appointment. Check your Wi-Fi or mobile data, then try again.');
    if (status !== 200) return linkRefused();
    times.push(performance.now() - started);
  }
  const rtt = times.sort((a, b) => a - b)[1];
  const net = navigator.connection || {};
  const weak = rtt > 800 || ['slow-2g', '2g'].includes(net.effectiveType);
  const slow = weak || rtt > 300 || net.effectiveType === '3g' || net.saveData;
  if (weak) $('join-audio').hidden = false;
  setText('chk-net', weak ? 'Connection: weak. Video may stop. You can join with sound only.'
    : slow ? 'Connection: slow. If the video stops during the call, tap "Sound only".'
      : 'Connection: good.');
}

async function check() {
  if (!(await claim('media-help'))) return;
  stopMeter();
  stopStream(stream);
  stream = null;
  $('check-results').hidden = false;
  setText('chk-camera', audioOnly ? 'Camera: not used (sound only).' : 'Camera: starting…');
  const connection = checkConnection();
  const ok = await acquire();
  $('mic-check').hidden = !ok;
  if (ok) {
    startMeter();
    if (!audioOnly && stream.getVideoTracks().length) {
      const preview = $('preview');
      const ready = () => preview.videoWidth && setText('chk-camera', 'Camera: working. You should see yourself.');
      preview.addEventListener('resize', ready, { once: true });
      ready();
    }
  } else {
    setText('chk-camera', 'Camera and microphone: not available. See the help below.');
  }
  await connection;
}

// ---- joining and leaving -------------------------------------------------

async function join() {
  // Start playback inside this tap so the officer can be heard (autoplay rules).
  $('remote').srcObject = call.remote;
  $('remote').play().catch(() => {});
  stopMeter();
  if (!(await claim('media-help'))) return show('intro');
  if (!(await acquire())) return show('intro');
  camOff = muted = false;
  call.receiveVideo = !audioOnly;
  state = null;
  updateButtons();
  render();
  show('call');
  call.start(stream);
  gallery.play();
  loadChat();
  $('flip').hidden = (await cameras()).length < 2;
  clearInterval(qualityTimer);
  qualityTimer = setInterval(showQuality, 2000);
}

function stopAll() {
  clearInterval(qualityTimer);
  stopMeter();
  call.leave();
  stopStream(stream);
  stream = null;
}

function quickExit() {
  try { stopAll(); } finally { location.replace('/static/neutral.html'); }
}

/** The messages so far (joining late, or again). */
async function loadChat() {
  const r = await getJSON(linkURL('chat'));
  if (r.ok) chat.addAll(r.body?.messages);
}

// ---- screen share: desktop browsers; phones send screenshots instead ---------

const screenShare = new ScreenButton($('share-screen'), (text) => setText('screen-note', text));
screenShare.attach(call);
if (!screenShare.supported) {
  $('screen-phone').hidden = false;
  if (isVictim) {
    $('screen-phone').querySelector('a').addEventListener('click', (e) => {
      e.preventDefault(); // no #fragment in the history (quick exit leaves nothing behind)
      $('uploads').scrollIntoView({ block: 'start' });
      $('upload-input').focus();
    });
  } else {
    $('screen-phone-upload').remove();
  }
}

// ---- status --------------------------------------------------------------

const CONN_TEXT = {
  connecting: 'Connecting…',
  network: 'Reconnecting after a network change…',
  reconnecting: 'Connection lost. Reconnecting…',
  retrying: 'Connection lost. Reconnecting…',
  offline: 'You are offline. The call will reconnect when your connection is back.',
  gaveup: 'Could not reconnect.',
};

function render() {
  const officer = state?.participants?.some((p) => STAFF_ROLES.includes(p.role) && p.connected);
  const paused = state?.status === 'paused';
  setText('status', CONN_TEXT[conn]
    || (paused ? 'Paused' : officer ? 'Connected to the officer' : 'Waiting for the officer'));
  $('retry').hidden = conn !== 'gaveup';
  $('rec').hidden = !state?.recording;
  $('pause').textContent = paused ? 'Rejoin' : 'Take a break';
  $('pause').classList.toggle('primary', paused);
  const message = paused ? (isVictim ? 'The call is paused. Nobody can see or hear you. Tap "Rejoin" when you are ready.'
    : 'The call is paused for now. Nobody can see or hear you until it goes on.')
    : conn === 'connected' && state && !officer ? 'Waiting for an officer to join. This usually takes a few minutes.'
      : audioOnly ? 'Sound only: video is off to save data.' : '';
  setText('stage-msg', message);
  $('stage-msg').hidden = !message;
  $('remote').classList.toggle('dim', Boolean(message));
  $('stage').classList.toggle('sound-only', audioOnly);
}

function updateButtons() {
  $('mute').textContent = muted ? 'Unmute' : 'Mute';
  $('cam').textContent = camOff ? 'Camera on' : 'Camera off';
  const noVideo = audioOnly || !stream?.getVideoTracks().length;
  $('cam').disabled = noVideo;
  $('flip').disabled = noVideo;
  $('audio-only').setAttribute('aria-pressed', String(audioOnly));
  $('self').hidden = noVideo || camOff;
}

async function showQuality() {
  const q = await call.quality().catch(() => null);
  if (!q || conn !== 'connected') return void ($('signal').hidden = true);
  $('signal').hidden = false;
  setText('signal', `Signal: ${{ good: 'good', fair: 'fair', poor: 'weak' }[q.level]}`);
  if (q.level === 'poor' && !audioOnly) setText('note', 'Your connection is weak. If the sound breaks up, tap "Sound only".');
}

/** Once police have closed the call: a link to the survey, if there is one to answer. */
async function offerSurvey() {
  const r = await postJSON(linkURL('survey'), {});
  if (!r.ok || !r.body?.survey_url) return; // answered already, or too late: say nothing
  $('survey-link').href = new URL(r.body.survey_url).pathname;
  $('survey-offer').hidden = false;
}

call.addEventListener('conn', (e) => { conn = e.detail; render(); });
call.addEventListener('rejoined', (e) => setText('note', e.detail === 'network'
  ? 'You were reconnected after a network change.' : 'You were reconnected.'));
call.addEventListener('state', (e) => { state = e.detail; render(); });
call.addEventListener('remote', () => $('remote').play().catch(() => {}));
call.addEventListener('participants', (e) => gallery.render(e.detail));
call.addEventListener('chat', (e) => chat.add(e.detail));
call.addEventListener('error', (e) => {
  const { code, message } = e.detail;
  if (String(code).startsWith('chat_')) chat.refused(message);
  else if (code === 'bad_location' || (code === 'not_allowed' && place)) place?.refused(message);
  else console.warn('server:', code, message);
});
call.addEventListener('refused', async () => {
  if ([403, 404, 410].includes(await linkStatus())) linkRefused();
});
call.addEventListener('closed', () => { stopAll(); show('ended'); if (isVictim) offerSurvey(); });
call.addEventListener('replaced', () => { stopAll(); show('elsewhere'); });
call.addEventListener('fatal', (e) => {
  console.warn('refused by the server:', e.detail.message); // a reason for support, not for the victim
  stopAll();
  show('error');
});

// ---- buttons -------------------------------------------------------------

$('quick-exit')?.addEventListener('click', (e) => { e.preventDefault(); quickExit(); });
let lastEscape = -Infinity;
addEventListener('keydown', (e) => {
  if (e.key !== 'Escape' || !quickExitShown) return;
  if (e.timeStamp - lastEscape < 1500) quickExit();
  lastEscape = e.timeStamp;
});

$('check').addEventListener('click', check);
$('join').addEventListener('click', join);
$('join-audio').addEventListener('click', () => {
  audioOnly = true;
  stopStream(stream); // the check's camera is no longer wanted
  stream = null;
  join();
});
$('rejoin').addEventListener('click', join);
$('take-over').addEventListener('click', join);
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

$('flip').addEventListener('click', () => switchCamera().then(showSelf));

$('audio-only').addEventListener('click', async () => {
  audioOnly = !audioOnly;
  $('audio-only').setAttribute('aria-pressed', String(audioOnly));
  setText('note', '');
  if (audioOnly) {
    stream.getVideoTracks().forEach((t) => t.stop());
    await call.setTrack('video', null);
  } else {
    await replaceTrack('video', videoConstraints('user')).catch(() => {
      setText('note', 'The camera could not start. You can see the officer, but they cannot see you.');
    });
  }
  call.setReceiveVideo(!audioOnly);
  showSelf();
  updateButtons();
  render();
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
  gallery.play();
  try {
    if (stream.getAudioTracks().every((t) => t.readyState === 'ended')) await replaceTrack('audio', AUDIO);
    if (!audioOnly && stream.getVideoTracks().some((t) => t.readyState === 'ended')) {
      await replaceTrack('video', videoConstraints('user'));
    }
  } catch {
    setText('note', 'Your camera or microphone stopped. Tap "Leave", then "Rejoin".');
  }
});
