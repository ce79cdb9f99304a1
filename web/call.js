// call.js: WebSocket signalling + one RTCPeerConnection, shared by the victim
// page and the officer console. The server is the only WebRTC peer (see
// media.md), so every (re)join is simply a new peer connection and a new offer.
//
// Events dispatched (CustomEvent, payload in .detail):
//   'conn'     'connecting' | 'connected' | 'reconnecting' | 'network' (reconnecting
//              after a network change) | 'offline' | 'retrying' | 'gaveup'
//   'rejoined' a new connection is up after a network change or a failure
//   'state'    the server's {type:'state', status, participants, recording}
//   'remote'   a remote track was (re)placed in call.remote
//   'refused'  the socket could not even open (the link may be closed or given
//              to another device): the page asks the server why
//   'closed'   police closed the consultation; the link is finished
//   'replaced' the same person joined from another tab or window (close 4001)
//   'fatal'    {code, message}: the server refused us (close 1008), or the staff
//              session ended (signed out or disabled: close 4003)
//   'error'    {type:'error', code, message} from the server; the socket stays up

const GIVE_UP_MS = 60000;        // stop auto-retrying after about a minute
const ICE_WAIT_MS = 4000;        // longest wait for ICE gathering before offering
const DISCONNECT_GRACE_MS = 4000; // 'disconnected' may heal by itself
const CONNECT_TIMEOUT_MS = 20000; // no media path after this: start over
const CONFIG_WAIT_MS = 3000;     // longest wait for the server's 'config' before offering
const ICE_SCHEMES = /^(stun|stuns|turn|turns):/i;

/**
 * The ICE servers the server's 'config' message names, checked: only STUN and TURN
 * URLs. With none configured this is empty and the peer connection contacts nobody
 * but the server (no public STUN server of a third party).
 */
function iceServersFrom(list) {
  if (!Array.isArray(list)) return [];
  return list.flatMap((s) => {
    const urls = (Array.isArray(s?.urls) ? s.urls : [s?.urls]).filter((u) => typeof u === 'string' && ICE_SCHEMES.test(u));
    if (!urls.length) return [];
    const server = { urls };
    if (typeof s.username === 'string') server.username = s.username;
    if (typeof s.credential === 'string') server.credential = s.credential;
    return [server];
  });
}

/** Camera constraints kept modest for low-end phones and poor networks. */
export function videoConstraints(facingMode = 'user', deviceId = null) {
  const size = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24 } };
  return deviceId ? { deviceId: { exact: deviceId }, ...size } : { facingMode, ...size };
}

export function stopStream(stream) {
  stream?.getTracks().forEach((t) => t.stop());
}

// Ask for VP8 first: every leg of a consultation must use the same codec.
function preferVP8(transceiver) {
  const caps = window.RTCRtpReceiver?.getCapabilities?.('video');
  if (!caps || !transceiver.setCodecPreferences) return;
  const vp8 = caps.codecs.filter((c) => /\/vp8$/i.test(c.mimeType));
  if (!vp8.length) return;
  try {
    transceiver.setCodecPreferences([...vp8, ...caps.codecs.filter((c) => !vp8.includes(c))]);
  } catch { /* keep the browser's order */ }
}

// Resolves when ICE gathering completes, or after ICE_WAIT_MS (late candidates trickle).
function iceGathered(pc) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => pc.iceGatheringState === 'complete' && done();
    const timer = setTimeout(done, ICE_WAIT_MS);
    pc.addEventListener('icegatheringstatechange', check);
    check();
  });
}

/** Grade a connection from its round-trip time (ms) and packet loss (%). */
export function grade({ rttMs, lossPct }) {
  if (rttMs > 600 || lossPct > 10) return 'poor';
  if (rttMs > 250 || lossPct > 3) return 'fair';
  return 'good';
}

export class Call extends EventTarget {
  constructor(wsPath) {
    super();
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    this.wsUrl = `${scheme}//${location.host}${wsPath}`;
    this.remote = new MediaStream(); // stable across rejoins: keep it as srcObject
    this.local = null;
    this.ws = null;
    this.pc = null;
    this.iceServers = [];  // from the server's 'config' message: none unless configured
    this.endedBecause = null; // the server's word before closing a staff socket (4003)
    this.active = false;   // false before start(), after leave() and after 'closed'
    this.sending = true;   // false while the call is paused: nothing leaves this device
    this.receiveVideo = true; // false in sound-only mode: the server sends no video either
    this.recovering = null; // why we are reconnecting: 'network' or 'failure'
    this.wasConnected = false; // connected at least once since start()
    this.timers = {};
    this.statsPc = null;   // the peer connection lastStats was taken from
    this.lastStats = null;
    this.resetBackoff();
    addEventListener('online', () => this.active && this.reconnect('network'));
    addEventListener('offline', () => this.active && this.emit('conn', 'offline'));
    // Android Chrome tells when the phone moves between Wi-Fi and mobile data.
    const net = navigator.connection;
    let netType = net?.type;
    net?.addEventListener?.('change', () => {
      if (net.type === netType) return; // only speed estimates changed
      netType = net.type;
      if (this.active && navigator.onLine !== false) this.reconnect('network');
    });
  }

  emit(type, detail) {
    // Whatever else is going on, no network is what the person needs to know.
    const offline = type === 'conn' && navigator.onLine === false && !['connected', 'gaveup'].includes(detail);
    this.dispatchEvent(new CustomEvent(type, { detail: offline ? 'offline' : detail }));
  }

  setTimer(name, ms, fn) { clearTimeout(this.timers[name]); this.timers[name] = setTimeout(fn, ms); }

  resetBackoff() { this.failSince = 0; this.attempt = 0; }

  /** Join with a local MediaStream (it may lack a video track: audio only). */
  start(localStream) {
    this.local = localStream || new MediaStream();
    this.active = true;
    this.recovering = null;
    this.wasConnected = false;
    this.resetBackoff();
    this.connect();
  }

  /** New peer connection and offer; reopens the socket if needed. */
  rejoin() {
    if (!this.active) return;
    clearTimeout(this.timers.retry);
    if (this.ws?.readyState === WebSocket.OPEN) this.offer();
    else this.connect();
  }

  /** User tap after giving up: start a fresh round of retries. */
  retry() { this.resetBackoff(); this.rejoin(); }

  /** The network changed under us: a new socket and a new offer on the same link
   * (the old socket may be silently dead, and aiortc has no ICE restart). */
  reconnect(reason) {
    if (!this.active) return;
    this.recovering = reason;
    this.resetBackoff();
    this.connect();
  }

  leave() { this.active = false; this.teardown(); }

  send(msg) {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  pause() { return this.send({ type: 'pause' }); }

  resume() { return this.send({ type: 'resume' }); }

  localTrack(kind) {
    return this.local?.getTracks().find((t) => t.kind === kind && t.readyState === 'live') || null;
  }

  transceiver(kind) {
    return this.pc?.getTransceivers().find((t) => t.receiver.track.kind === kind && !t.stopped);
  }

  /** Swap the local track of one kind (null stops sending it) without renegotiation. */
  async setTrack(kind, track) {
    for (const t of this.local.getTracks()) if (t.kind === kind && t !== track) this.local.removeTrack(t);
    if (track) this.local.addTrack(track);
    await this.transceiver(kind)?.sender.replaceTrack(this.sending ? track : null);
  }

  /** Send the local tracks, or nothing at all (during a break). */
  async setSending(on) {
    if (this.sending === on) return;
    this.sending = on;
    await Promise.all(['audio', 'video'].map((kind) =>
      this.transceiver(kind)?.sender.replaceTrack(on ? this.localTrack(kind) : null)));
  }

  /** Sound only: stop receiving video as well as sending it (a new offer). */
  setReceiveVideo(on) {
    if (this.receiveVideo === on) return;
    this.receiveVideo = on;
    if (this.active) this.rejoin();
  }

  connect() {
    this.teardown(); // old socket, peer connection and timers
    this.emit('conn', this.recovering === 'network' ? 'network' : this.recovering || this.failSince ? 'reconnecting' : 'connecting');
    const ws = (this.ws = new WebSocket(this.wsUrl));
    let opened = false;
    // The server's first message is 'config' (the ICE servers to use); offer then.
    ws.onopen = () => { opened = true; this.setTimer('config', CONFIG_WAIT_MS, () => this.offer()); };
    ws.onmessage = (e) => this.onMessage(e.data);
    ws.onclose = (e) => {
      if (ws !== this.ws) return; // a socket we replaced on purpose
      this.ws = null;
      if (e.code === 4000) this.finish('closed');
      else if (e.code === 4001) this.finish('replaced'); // joined again elsewhere: do not fight it
      else if (e.code === 1008) this.finish('fatal', { code: 'policy', message: e.reason || 'The connection was refused.' });
      else if (e.code === 4003) {
        this.finish('fatal', { code: 'session_ended', message: this.endedBecause || 'Your session has ended. Sign in again.' });
      }
      else if (this.active) {
        if (!opened) this.emit('refused');
        if (this.active) this.retryLater('retrying');
      }
    };
  }

  async offer() {
    this.pc?.close();
    const pc = (this.pc = new RTCPeerConnection({ iceServers: this.iceServers }));
    let sent = false;
    for (const kind of ['audio', 'video']) {
      const track = this.sending ? this.localTrack(kind) : null;
      // Sound only: 'sendonly' with no track sends nothing either (the server needs
      // the offer to send, to have a track to receive).
      const direction = kind === 'video' && !this.receiveVideo ? 'sendonly' : 'sendrecv';
      const tr = pc.addTransceiver(track || kind, { direction, streams: [this.local] });
      if (kind === 'video') preferVP8(tr);
    }
    pc.ontrack = (e) => {
      if (pc !== this.pc) return;
      for (const t of this.remote.getTracks()) if (t.kind === e.track.kind) this.remote.removeTrack(t);
      this.remote.addTrack(e.track);
      this.emit('remote');
    };
    pc.onicecandidate = (e) => {
      if (!sent || pc !== this.pc || (e.candidate && !e.candidate.candidate)) return;
      this.send({ type: 'candidate', candidate: e.candidate ? e.candidate.toJSON() : null });
    };
    pc.onconnectionstatechange = () => this.onPeerState(pc);
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc);
      if (pc !== this.pc) return;
      sent = this.send({ type: 'offer', sdp: pc.localDescription.sdp });
      this.setTimer('connect', CONNECT_TIMEOUT_MS, () => {
        if (pc === this.pc && pc.connectionState !== 'connected') this.retryLater('reconnecting');
      });
    } catch (err) {
      console.error('offer failed', err);
      if (pc === this.pc) this.retryLater('reconnecting');
    }
  }

  onPeerState(pc) {
    if (pc !== this.pc || !this.active) return;
    const s = pc.connectionState;
    if (s === 'connected') {
      clearTimeout(this.timers.grace);
      clearTimeout(this.timers.connect);
      this.resetBackoff();
      this.wasConnected = true;
      this.emit('conn', 'connected');
      if (this.recovering) this.emit('rejoined', this.recovering);
      this.recovering = null;
    } else if (s === 'failed') {
      this.retryLater('reconnecting');
    } else if (s === 'disconnected') {
      this.emit('conn', 'reconnecting');
      this.setTimer('grace', DISCONNECT_GRACE_MS, () => {
        if (pc === this.pc && pc.connectionState !== 'connected') this.retryLater('reconnecting');
      });
    }
  }

  async onMessage(data) {
    let m;
    try { m = JSON.parse(data); } catch { return; }
    const pc = this.pc;
    try {
      if (m.type === 'config') {
        this.iceServers = iceServersFrom(m.ice_servers);
        if (!this.pc && this.ws?.readyState === WebSocket.OPEN) {
          clearTimeout(this.timers.config);
          this.offer();
        }
      } else if (m.type === 'answer' && pc?.signalingState === 'have-local-offer') {
        await pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
      } else if (m.type === 'candidate' && pc?.remoteDescription) {
        await pc.addIceCandidate(m.candidate || undefined);
      } else if (m.type === 'state') {
        this.setSending(m.status !== 'paused').catch((err) => console.warn('pause', err));
        this.emit('state', m);
      } else if (m.type === 'closed') this.finish('closed');
      else if (m.type === 'statement') window.dispatchEvent(new CustomEvent('evr:statement', { detail: m })); // statement-*.js
      else if (m.type === 'error') {
        if (m.code === 'session_ended') this.endedBecause = m.message;
        this.emit('error', m);
      }
    } catch (err) {
      console.warn('signalling', m.type, err);
      if (m.type === 'answer' && pc === this.pc) this.retryLater('reconnecting');
    }
  }

  // Exponential backoff (1, 2, 4, 8, 15, 15… s) for about a minute, then 'gaveup'.
  retryLater(status) {
    clearTimeout(this.timers.retry);
    if (!this.failSince) this.failSince = Date.now();
    if (!this.recovering && this.wasConnected) this.recovering = 'failure';
    if (Date.now() - this.failSince > GIVE_UP_MS) {
      this.teardown();
      this.emit('conn', 'gaveup'); // still active: retry() or 'online' starts again
      return;
    }
    this.emit('conn', this.recovering === 'network' && status !== 'retrying' ? 'network' : status);
    this.setTimer('retry', Math.min(1000 * 2 ** this.attempt++, 15000), () => this.rejoin());
  }

  finish(type, detail) {
    if (!this.active) return;
    this.active = false;
    this.teardown();
    this.emit(type, detail);
  }

  dropSocket() {
    const ws = this.ws;
    this.ws = null; // so its onclose is ignored
    if (ws && ws.readyState < WebSocket.CLOSING) ws.close(1000);
  }

  teardown() {
    Object.values(this.timers).forEach(clearTimeout);
    this.pc?.close();
    this.pc = null;
    this.dropSocket();
  }

  /**
   * How the connection is doing, from the peer connection's statistics since the
   * previous call: {level: 'good'|'fair'|'poor', rttMs, lossPct, fps, width, height}
   * (fps and size of the video we receive), or null when not connected.
   */
  async quality() {
    const pc = this.pc;
    if (!pc || pc.connectionState !== 'connected') return null;
    const report = await pc.getStats();
    let rtt = null;
    let video = null;
    let lost = 0;
    let received = 0;
    report.forEach((s) => {
      if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated && s.currentRoundTripTime != null) {
        rtt = s.currentRoundTripTime;
      } else if (s.type === 'inbound-rtp') {
        lost += s.packetsLost || 0;
        received += s.packetsReceived || 0;
        if (s.kind === 'video') video = s;
      }
    });
    const now = { at: performance.now(), lost, received, frames: video?.framesDecoded || 0 };
    const prev = pc === this.statsPc ? this.lastStats : null;
    this.statsPc = pc;
    this.lastStats = now;
    if (!prev) return null; // deltas need two samples
    const seconds = Math.max(0.001, (now.at - prev.at) / 1000);
    const lostDelta = Math.max(0, now.lost - prev.lost);
    const total = lostDelta + Math.max(0, now.received - prev.received);
    const q = {
      rttMs: rtt == null ? null : Math.round(rtt * 1000),
      lossPct: total ? Math.round((1000 * lostDelta) / total) / 10 : 0,
      fps: Math.round((now.frames - prev.frames) / seconds),
      width: video?.frameWidth || 0,
      height: video?.frameHeight || 0,
    };
    q.level = grade(q);
    return q;
  }
}
