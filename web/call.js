// call.js: WebSocket signalling + one RTCPeerConnection, shared by the victim
// page (also the guests' page) and the officer console. The server is the only
// WebRTC peer (see media.md), so every (re)join is simply a new peer connection and
// a new offer. Within one connection the server renegotiates when someone joins,
// leaves or shares a screen (its {type:'offer'}: we answer, as the polite peer of
// perfect negotiation), and so do we when we start or stop sharing our screen.
//
// Events dispatched (CustomEvent, payload in .detail):
//   'conn'     'connecting' | 'connected' | 'reconnecting' | 'network' (reconnecting
//              after a network change) | 'offline' | 'retrying' | 'gaveup'
//   'rejoined' a new connection is up after a network change or a failure
//   'state'    the server's {type:'state', status, participants, recording}
//   'remote'   a remote track was (re)placed in call.remote (the tracks of our own
//              first audio and video transceivers: in a 1:1 call, the other person)
//   'participants' [{id, role, name, connected, media, screen, primary}]: everyone
//              else whose media this connection carries now (state.participants[].mids),
//              each with a stable MediaStream of their audio and video, the stream of
//              their shared screen or null, and primary: carried on call.remote
//   'screen'   true | false: our own screen share started or stopped
//   'chat'     {id, from: {role, name}, text, at} from the server
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
const GLARE_WAIT_MS = 3000;      // longest wait for the other half of a collision
const RECEIVING = new Set(['sendrecv', 'recvonly']);

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

/**
 * The offer as sent: ``a=content:slides`` added to the m-section whose mid is ``mid``
 * (our screen share), which tells the server it is a screen and not a camera. Only
 * the copy sent is changed; the browser keeps its own description.
 */
export function markSlides(sdp, mid) {
  if (mid == null) return sdp;
  const eol = sdp.includes('\r\n') ? '\r\n' : '\n';
  const sections = sdp.split(/(?=^m=)/m);
  return sections.map((section) => {
    if (!section.startsWith('m=video') || !section.split(/\r?\n/).includes(`a=mid:${mid}`)) return section;
    if (/^a=content:/m.test(section)) return section.replace(/^a=content:.*$/m, 'a=content:slides');
    return section.replace(/(^a=mid:.*$)/m, `$1${eol}a=content:slides`);
  }).join('');
}

/** Put ``tracks`` (and only those) in ``stream``, leaving tracks already there in place. */
function syncTracks(stream, tracks) {
  let changed = false;
  for (const t of stream.getTracks()) if (!tracks.includes(t)) { stream.removeTrack(t); changed = true; }
  for (const t of tracks) if (!stream.getTracks().includes(t)) { stream.addTrack(t); changed = true; }
  return changed;
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
    this.isLink = wsPath.startsWith('/j/'); // the victim's or a guest's page, not staff
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
    this.primary = [];     // our own first audio and video transceivers (call.remote's)
    this.state = null;     // the server's last 'state'
    this.streams = new Map(); // participant id -> {media, screen}: stable MediaStreams
    this.screen = null;    // our shared screen's track, while we share it
    this.screenTransceiver = null;
    this.negotiation = { pending: false, glareDue: false, offerDue: false, awaitingAnswer: false };
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

  leave() {
    this.active = false;
    this.teardown();
    if (this.screen) this.stopScreenShare();
  }

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
    if (this.screenTransceiver && this.screen) await this.screenTransceiver.sender.replaceTrack(on ? this.screen : null);
  }

  // ---- screen share ------------------------------------------------------

  /** Whether this browser can share a screen at all (desktop browsers; not phones). */
  static canShareScreen() {
    const mobile = navigator.userAgentData?.mobile || /Android|iPhone|iPad|iPod|Mobile/i.test(navigator.userAgent);
    return typeof navigator.mediaDevices?.getDisplayMedia === 'function' && !mobile;
  }

  /**
   * Share a screen, window or tab: the browser asks which. A second video track on
   * the same peer connection (a sendonly transceiver marked a=content:slides in our
   * offer), so the same ICE session carries it. Throws what getDisplayMedia throws
   * (NotAllowedError when the person cancels).
   */
  async startScreenShare() {
    if (this.screen) return;
    const display = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15, max: 30 } }, audio: false });
    const track = display.getVideoTracks()[0];
    display.getAudioTracks().forEach((t) => t.stop());
    if (!track) throw Object.assign(new Error('No screen was chosen.'), { name: 'NotFoundError' });
    if ('contentHint' in track) track.contentHint = 'detail';
    this.screen = track;
    // Stopped from the browser's own "Stop sharing" bar.
    track.addEventListener('ended', () => { if (this.screen === track) this.stopScreenShare(); });
    this.emit('screen', true);
    const pc = this.pc;
    if (!pc) return; // our next offer carries it (see offer())
    const tr = this.screenTransceiver;
    if (tr && !tr.stopped && tr.mid != null) { // shared before: the same m-section again
      await tr.sender.replaceTrack(this.sending ? track : null);
      tr.direction = 'sendonly';
    } else {
      this.screenTransceiver = this.addScreenTransceiver(pc);
    }
    this.requestOffer();
  }

  /** Stop sharing: the screen's transceiver goes inactive (renegotiated). */
  async stopScreenShare() {
    const track = this.screen;
    if (!track) return;
    this.screen = null;
    track.stop();
    this.emit('screen', false);
    const tr = this.screenTransceiver;
    if (!tr || tr.stopped || !this.pc) return;
    await tr.sender.replaceTrack(null).catch(() => {});
    if (tr.mid == null) { // never negotiated: nothing to tell the server
      tr.direction = 'inactive';
      return;
    }
    tr.direction = 'inactive';
    this.requestOffer();
  }

  addScreenTransceiver(pc) {
    const tr = pc.addTransceiver(this.sending ? this.screen : 'video', { direction: 'sendonly' });
    if (!this.sending) tr.sender.replaceTrack(null);
    preferVP8(tr);
    return tr;
  }

  // ---- chat and location -------------------------------------------------

  /** Send a chat message (the server checks 1..2000 characters). */
  chat(text) { return this.send({ type: 'chat', text }); }

  /** Send the victim's location once (the server refuses anyone else's). */
  shareLocation({ lat, lon, accuracy_m: accuracy }) {
    return this.send({ type: 'location', lat, lon, accuracy_m: accuracy });
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
    this.negotiation = { pending: false, glareDue: false, offerDue: false, awaitingAnswer: false };
    this.primary = ['audio', 'video'].map((kind) => {
      const track = this.sending ? this.localTrack(kind) : null;
      // Sound only: 'sendonly' with no track sends nothing either (the server needs
      // the offer to send, to have a track to receive).
      const direction = kind === 'video' && !this.receiveVideo ? 'sendonly' : 'sendrecv';
      const tr = pc.addTransceiver(track || kind, { direction, streams: [this.local] });
      if (kind === 'video') preferVP8(tr);
      return tr;
    });
    // Sharing a screen while (re)joining: the first offer carries it too.
    this.screenTransceiver = this.screen ? this.addScreenTransceiver(pc) : null;
    pc.ontrack = (e) => {
      if (pc !== this.pc) return;
      if (this.primary.includes(e.transceiver)) {
        for (const t of this.remote.getTracks()) if (t.kind === e.track.kind) this.remote.removeTrack(t);
        this.remote.addTrack(e.track);
        this.emit('remote');
      }
      this.updateParticipants();
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
      sent = this.send({ type: 'offer', sdp: this.offerSdp(pc) });
      this.negotiation.awaitingAnswer = sent;
      this.setTimer('connect', CONNECT_TIMEOUT_MS, () => {
        if (pc === this.pc && pc.connectionState !== 'connected') this.retryLater('reconnecting');
      });
    } catch (err) {
      console.error('offer failed', err);
      if (pc === this.pc) this.retryLater('reconnecting');
    }
  }

  /** Our offer as sent: the browser's, with our screen's m-section marked. */
  offerSdp(pc) {
    const tr = this.screenTransceiver;
    return markSlides(pc.localDescription.sdp, tr && !tr.stopped ? tr.mid : null);
  }

  // ---- renegotiation (perfect negotiation; the server is the impolite peer) ----

  /** Offer again on this connection (same ICE session) as soon as nothing collides. */
  requestOffer() {
    this.negotiation.pending = true;
    this.maybeOffer();
  }

  maybeOffer() {
    const pc = this.pc;
    const n = this.negotiation;
    if (!pc || !n.pending || n.glareDue || n.offerDue || pc.signalingState !== 'stable' || !pc.remoteDescription) return;
    if (this.ws?.readyState !== WebSocket.OPEN) return;
    n.pending = false;
    this.renegotiate(pc);
  }

  async renegotiate(pc) {
    try {
      await pc.setLocalDescription(await pc.createOffer());
      if (pc !== this.pc) return;
      await iceGathered(pc);
      if (pc !== this.pc || pc.signalingState !== 'have-local-offer') return; // rolled back meanwhile
      this.negotiation.awaitingAnswer = this.send({ type: 'offer', sdp: this.offerSdp(pc) });
    } catch (err) {
      console.warn('renegotiation failed', err);
      if (pc === this.pc) this.retryLater('reconnecting');
    }
  }

  /** The server's offer: someone joined or left, or a screen share started or stopped. */
  async onServerOffer(sdp) {
    const pc = this.pc;
    if (!pc || pc.signalingState === 'closed') return;
    // Our first offer is still unanswered: this offer was for the connection ours
    // replaces. The server answers ours and renegotiates then if it needs to.
    if (!pc.remoteDescription && pc.signalingState === 'have-local-offer') return;
    const n = this.negotiation;
    if (pc.signalingState === 'have-local-offer') {
      // A collision: we are polite, so ours gives way and goes again after this one.
      // The server answers ours with error 'glare' (perhaps it did already).
      await pc.setLocalDescription({ type: 'rollback' });
      if (n.awaitingAnswer) n.glareDue = true;
      n.awaitingAnswer = false;
      n.pending = true;
      this.setTimer('glare', GLARE_WAIT_MS, () => { n.glareDue = false; this.maybeOffer(); });
    }
    n.offerDue = false;
    await pc.setRemoteDescription({ type: 'offer', sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    if (pc !== this.pc) return;
    this.send({ type: 'answer', sdp: pc.localDescription.sdp });
    this.updateParticipants();
    this.maybeOffer();
  }

  /** The server refused our offer because its own crossed it: roll ours back, answer
   * the server's (which comes, if it has not yet) and then offer again. */
  async onGlare() {
    const pc = this.pc;
    if (!pc) return;
    const n = this.negotiation;
    if (!pc.remoteDescription) { // a first offer: simply offer again, a moment later
      this.setTimer('glare', 500, () => this.rejoin());
      return;
    }
    if (n.glareDue) { // the server's offer came first and was answered already
      n.glareDue = false;
      this.maybeOffer();
      return;
    }
    if (pc.signalingState === 'have-local-offer') {
      await pc.setLocalDescription({ type: 'rollback' });
      n.awaitingAnswer = false;
      n.pending = true;
      n.offerDue = true;
      this.setTimer('glare', GLARE_WAIT_MS, () => { n.offerDue = false; this.maybeOffer(); });
    }
  }

  // ---- who is carried on which transceiver ---------------------------------

  /**
   * Everyone else whose media this connection carries now, from state.participants[].mids
   * and the transceivers that really receive (a transceiver the server made inactive
   * carries nobody). Without any mids (a server that gives none, or a 1:1 call on
   * one) the other person is the one on call.remote.
   */
  updateParticipants() {
    const pc = this.pc;
    const list = this.state?.participants || [];
    const byMid = new Map((pc?.getTransceivers() || [])
      .filter((t) => t.mid != null && !t.stopped).map((t) => [t.mid, t]));
    const received = (mid) => {
      const t = mid == null ? null : byMid.get(String(mid));
      return t && RECEIVING.has(t.currentDirection) ? t : null;
    };
    const out = [];
    const seen = new Set();
    if (list.some((p) => p.mids)) {
      for (const p of list) {
        if (p.you || !p.mids) continue;
        const media = ['audio', 'video'].map((k) => received(p.mids[k])).filter(Boolean);
        const screen = received(p.mids.screen);
        if (!media.length && !screen) continue;
        const id = p.id || p.role;
        const s = this.streamsOf(id);
        syncTracks(s.media, media.map((t) => t.receiver.track));
        syncTracks(s.screen, screen ? [screen.receiver.track] : []);
        seen.add(id);
        out.push({
          id, role: p.role, name: p.name || '', connected: p.connected !== false,
          media: s.media, screen: screen ? s.screen : null, primary: media.some((t) => this.primary.includes(t)),
        });
      }
    } else {
      const other = this.otherParty(list);
      if (other) out.push({ id: other.id || other.role, role: other.role, name: other.name || '', connected: true, media: this.remote, screen: null, primary: true });
    }
    for (const id of this.streams.keys()) if (!seen.has(id)) this.streams.delete(id);
    this.emit('participants', out);
  }

  /** The other person of a 1:1 call, for a state without mids: the first connected
   * participant that is not us (staff see the victim; the victim and guests, staff). */
  otherParty(list) {
    const others = list.filter((p) => !p.you && p.connected);
    return others.find((p) => p.role === 'victim' && !this.isLink) || others.find((p) => ['officer', 'sergeant'].includes(p.role))
      || null;
  }

  streamsOf(id) {
    if (!this.streams.has(id)) this.streams.set(id, { media: new MediaStream(), screen: new MediaStream() });
    return this.streams.get(id);
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
        this.negotiation.awaitingAnswer = false;
        await pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
        this.updateParticipants();
        this.maybeOffer();
      } else if (m.type === 'offer' && typeof m.sdp === 'string') {
        await this.onServerOffer(m.sdp);
      } else if (m.type === 'candidate' && pc?.remoteDescription) {
        await pc.addIceCandidate(m.candidate || undefined);
      } else if (m.type === 'state') {
        this.setSending(m.status !== 'paused').catch((err) => console.warn('pause', err));
        this.state = m;
        this.emit('state', m);
        this.updateParticipants();
      } else if (m.type === 'chat') this.emit('chat', m);
      else if (m.type === 'closed') this.finish('closed');
      else if (m.type === 'statement') window.dispatchEvent(new CustomEvent('evr:statement', { detail: m })); // statement-*.js
      else if (m.type === 'error' && m.code === 'glare') await this.onGlare();
      else if (m.type === 'error') {
        if (m.code === 'session_ended') this.endedBecause = m.message;
        this.emit('error', m);
      }
    } catch (err) {
      console.warn('signalling', m.type, err);
      // A description we could not apply: start over on a new connection.
      if (['answer', 'offer'].includes(m.type) && pc === this.pc) this.retryLater('reconnecting');
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
    if (this.screen) this.stopScreenShare();
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
    this.screenTransceiver = null;
    if (this.streams.size) this.updateParticipants(); // nobody is carried any more
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
