#!/usr/bin/env python3
"""Benchmark: the same N 1:1 calls through Janus (a C media server) and through EVR, in one run.

    python bench/peers.py                        # 8 and 16 calls, 15 s windows
    python bench/peers.py --calls 2 --seconds 5
    python bench/peers.py --calls 16 --recording --runs 3
    python bench/peers.py --skip-janus           # EVR alone (also --evr-only)
    python bench/peers.py --janus-only           # Janus alone

Why: bench/calls.py compares EVR with a transcoding relay, which any forwarder beats
by far. A fair peer is a media server that forwards RTP packets, written in C:
Janus's VideoCall plugin does exactly what a 1:1 call needs (each side's audio and
video to the other, NACKs answered from a per-stream history, keyframe requests
passed on). Run on the same machine, with the same clients, media and windows, it
says how far EVR's CPU and latency are from what a forwarder can do.

What it does, for each number of calls (``--calls``, default 8 and 16), ``--runs``
times (every other run in the reverse order; CPU figures are the runs' median):

1. Janus, when Debian's ``janus`` is installed (this script installs nothing; without
   it, it says so and measures EVR alone): started as a subprocess on a temporary
   copy of /etc/janus whose ``janus.jcfg`` enables only the VideoCall plugin and the
   HTTP transport (bound to 127.0.0.1 on a free port), names no STUN server (nothing
   beyond this machine is contacted), uses an RTP port range and logs warnings and
   errors only. Each call is two aiortc clients speaking the Janus HTTP API: a session,
   a ``janus.plugin.videocall`` handle, ``register``; the caller sends ``call`` with
   its offer, the callee gets ``incomingcall`` from its session's long poll and
   ``accept``s with its answer. aiortc gathers its candidates before
   ``setLocalDescription`` returns, so the SDP is complete and the trickle is only
   ``{"completed": true}``; sessions get a keepalive every 20 s.
2. EVR: a fresh ``evr serve`` on a temporary data directory, started and driven as
   bench/calls.py does (consultations, the victim's link claimed, the officer logged
   in), with recording off (``EVR_RECORDING=false``); with ``--recording``, again with
   recording on. ``--workers N`` is passed to ``evr serve`` when its ``--help`` names
   ``--workers``, and left out (with a line saying so) when it does not.

Each phase runs the clients in separate worker processes (``--client-workers``,
default 2), each sending bench/calls.py's pre-encoded 640x480 VP8 clip at about
1 Mbit/s plus Opus (no encoder runs), and measures, over the same window after the
same warm-up: the server process's CPU time (all its threads and children: % of one
core, and per call), the client processes' CPU, and the machine's busy share (all
cores, as bench/calls.py's ``system_busy``). Every frame sent in the window is looked
for at the far end by content (each clip frame is distinct; bench/calls.py's
``map_offset``): frames lost are counted per direction. The clip loops (video every
2 s, audio every 1 s), so content names a frame only up to a loop; of the candidates
a loop apart, the one under which frames arrive after they were sent, and soonest,
is taken (it matters only when a saturated machine delays a stream by most of a loop).

Latency added by the server, exactly: for each video frame (and audio packet) sent in
the window and received, the receiving client's ``time.monotonic()`` when aioice read
the frame's packet with the marker bit from its socket (audio: the frame's packet;
``Connection.data_received``, patched in the client workers: SRTP leaves the RTP
header in clear), minus the sending client's ``time.monotonic()`` just after its DTLS
transport handed the frame's last packet to the socket (``RTCDtlsTransport._send_rtp``,
patched there too). Both clocks are the system's CLOCK_MONOTONIC, shared by all
processes on Linux, so times from two worker processes compare. It is what the server
adds on loopback (its receive, forward and send, and its queues), plus the kernel's
loopback hops and however late the receiving client's event loop got to reading its
socket (a busy client worker or machine adds to it: the load lines say how busy). It
is taken before the receiving client's jitter buffer on purpose: aiortc's releases a
video frame only when the next one starts, which would add a frame interval (33 ms)
to every figure whatever the server does; the clients' frame logs (after that buffer)
are still what identifies each frame's content. Printed beside it: the same to the
client's ``RTCRtpReceiver`` (``_handle_rtp_packet``, wrapped on the instance: after
aioice's queue, the DTLS transport's task and SRTP), which adds the receiving client's
own queueing, and end to end through its jitter buffer.

Targets (from the issue): EVR's server CPU per call / Janus's <= 1.0 at 8 and at 16
calls with recording off, <= 1.3 with recording on; at 16 calls, the latency EVR adds
p50 < 2 ms and p99 < 10 ms (video and audio each). The script prints PASS/FAIL lines
and exits 0 either way (1 when a phase could not run: the others still run and are
reported, and the failure is said with the end of its server's log).
"""

from __future__ import annotations

# Only the standard library and bench/calls.py (itself standard library only) at module
# level: the client workers are spawned processes that import this file.
import argparse
import asyncio
import bisect
import itertools
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import calls  # noqa: E402  (bench/calls.py: its clip, frame matching, phases and measurements)
from calls import KINDS, MOD32, STEP, pct, verdict  # noqa: E402

TARGET_CPU_RATIO = 1.0  # EVR / Janus, CPU per call, recording off
TARGET_CPU_RATIO_RECORDING = 1.3  # the same with EVR recording every participant
TARGET_ADDED_P50 = 0.002  # s, at TARGET_LATENCY_CALLS calls
TARGET_ADDED_P99 = 0.010
TARGET_LATENCY_CALLS = 16
TARGET_CPU_CALLS = (8, 16)

JANUS_PLUGIN = "janus.plugin.videocall"
KEEPALIVE = 20.0  # s between a Janus session's keepalives (it times out after 60)
RTP_PORTS = "20000-40000"


# ---------------------------------------------------------------------------
# client workers (separate processes)
# ---------------------------------------------------------------------------

#: In each client worker: the time each sent frame's last RTP packet left, by SSRC and
#: RTP timestamp (filled by the patched ``RTCDtlsTransport._send_rtp``).
SENT: dict[int, dict[int, float]] = {}
#: In each client worker: when each received frame was read from the socket, by SSRC and
#: RTP timestamp: its packet with the marker bit (video), its first packet (audio: one
#: packet a frame, whose marker bit a forwarder need not keep). Filled by the patched
#: ``aioice`` ``Connection.data_received``.
ARRIVED: dict[int, dict[int, float]] = {}
FIRST: dict[int, dict[int, float]] = {}


def log_packets() -> None:
    """Note when every RTP packet with the marker bit (a frame's last) was sent, and when
    received packets were read from the socket.

    Patched on the classes in the client worker process only (never a server's): every
    connection there goes through them, whichever transport the bundle left it with.
    RTCP, STUN and DTLS are not noted, nor retransmissions (the first time counts)."""
    from aiortc.rtcdtlstransport import RTCDtlsTransport
    from aiortc.rtp import is_rtcp

    original = RTCDtlsTransport._send_rtp
    if getattr(original, "bench_logged", False):
        return

    async def send_rtp(self: Any, data: bytes) -> None:
        await original(self, data)
        if len(data) >= 12 and data[1] & 0x80 and not is_rtcp(data):
            log = SENT.setdefault(int.from_bytes(data[8:12], "big"), {})
            log.setdefault(int.from_bytes(data[4:8], "big"), time.monotonic())

    send_rtp.bench_logged = True  # type: ignore[attr-defined]
    RTCDtlsTransport._send_rtp = send_rtp  # type: ignore[method-assign]

    from aioice.ice import Connection

    received = Connection.data_received

    def data_received(self: Any, data: bytes, component: int) -> None:
        # SRTP leaves the RTP header in clear: version 2, marker bit, not RTCP.
        if len(data) >= 12 and data[0] >> 6 == 2 and not is_rtcp(data):
            now, ssrc, ts = time.monotonic(), int.from_bytes(data[8:12], "big"), int.from_bytes(data[4:8], "big")
            FIRST.setdefault(ssrc, {}).setdefault(ts, now)
            if data[1] & 0x80:
                ARRIVED.setdefault(ssrc, {}).setdefault(ts, now)
        received(self, data, component)

    Connection.data_received = data_received  # type: ignore[method-assign]


class Received:
    """What one client receives, per stream key (EVR: the mid; Janus: the kind)."""

    def __init__(self) -> None:
        #: Frames out of the jitter buffer: (RTP timestamp, arrival, hash, size, keyframe),
        #: the shape bench/calls.py's matching reads.
        self.rx: dict[str, list[tuple[int, float, int, int, bool]]] = {}
        #: At the RTCRtpReceiver (after the ICE queue and SRTP, before the jitter buffer):
        #: RTP timestamp -> when its marker packet (audio: its packet) arrived.
        self.packets: dict[str, dict[int, float]] = {}
        self.receivers: dict[str, Any] = {}
        #: The SSRCs of those packets (the stream's, and its RTX stream's now and then).
        self.ssrcs: dict[str, Counter[int]] = {}
        self.kinds: dict[str, str] = {}

    def sink(self, key: str, then: Optional[Callable[[Any], None]] = None) -> Callable[[Any], None]:
        rx = self.rx.setdefault(key, [])

        def on_frame(frame: Any) -> None:
            if then is not None:
                then(frame)
            rx.append((frame.pts, time.monotonic(), hash(frame.data), len(frame.data), frame.is_keyframe))

        return on_frame

    def watch(self, key: str, receiver: Any, kind: str) -> None:
        """Time each frame's packets as they reach ``receiver``, before its jitter buffer
        (and learn the stream's SSRC, by which :data:`ARRIVED` has it)."""
        arrivals = self.packets.setdefault(key, {})
        if self.receivers.get(key) is receiver:
            return  # a renegotiation: already watched
        self.receivers[key], self.kinds[key] = receiver, kind
        handle = receiver._handle_rtp_packet
        every = kind == "audio"  # one packet per Opus frame; its marker bit need not be set
        ssrcs = self.ssrcs.setdefault(key, Counter())

        async def timed(packet: Any, arrival_time_ms: int) -> None:
            if every or packet.marker:
                arrivals.setdefault(packet.timestamp, time.monotonic())
                ssrcs[packet.ssrc] += 1
            await handle(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = timed

    def arrivals(self, key: str, socket: bool = True) -> dict[int, float]:
        """When the frames of ``key`` arrived: read from the socket (``socket``; else at
        the receiver), by the timestamps they leave the jitter buffer with: aiortc counts
        those from the first frame's (``TimestampMapper``)."""
        mapper = getattr(self.receivers.get(key), "_RTCRtpReceiver__timestamp_mapper", None)
        origin = getattr(mapper, "_origin", None)
        if origin is None:
            return {}
        times = self.packets.get(key, {})
        if socket:  # the stream's SSRC, as the receiver saw it most (not its RTX stream's)
            ssrc = self.ssrcs[key].most_common(1)[0][0] if self.ssrcs.get(key) else None
            times = (FIRST if self.kinds[key] == "audio" else ARRIVED).get(ssrc, {}) if ssrc is not None else {}
        return {(ts - origin) % MOD32: t for ts, t in times.items()}


def sender_origin(source: Any, sent: dict[int, float], step: int) -> Optional[int]:
    """The sender's RTP timestamp of frame 0: each logged send follows the frame's
    hand-over to the sender (``source.times``) and precedes the next one's."""
    votes: Counter[int] = Counter()
    for ts, t in itertools.islice(sent.items(), 300):
        k = bisect.bisect_right(source.times, t) - 1
        if k >= 0:
            votes[(ts - k * step) % MOD32] += 1
    return votes.most_common(1)[0][0] if votes else None


class Timing:
    """One direction's frames timed by the clients, on both sides of the server."""

    def __init__(self, source: Any, ssrc: int, rx: list[tuple[int, float, int, int, bool]],
                 arrivals: dict[int, float], kind: str) -> None:
        self.source, self.arrivals, self.step = source, arrivals, STEP[kind]
        self.sent = SENT.get(ssrc, {})
        self.origin = sender_origin(source, self.sent, self.step)
        self.received = {r[0] % MOD32 for r in rx}  # frames out of the receiver's jitter buffer
        self.offset = self.resolve(calls.map_offset(source, rx, kind))

    def added(self, offset: int) -> list[float]:
        """Arrival at the receiver (before its jitter buffer) - departure from the sender,
        for each frame of the window that the receiver got, if ``offset`` maps them."""
        out = []
        for k in range(self.source.mark, self.source.end):
            ts = (offset + k * self.step) % MOD32
            t_in = self.arrivals.get(ts)
            t_out = self.sent.get((self.origin + k * self.step) % MOD32) if self.origin is not None else None
            if ts in self.received and t_in is not None and t_out is not None:
                out.append(t_in - t_out)
        return out

    def resolve(self, offset: Optional[int]) -> Optional[int]:
        """The content match, made sure of by time. The clip loops (every 2 s for video,
        1 s for audio), so contents map a frame only modulo the loop: a stream delayed
        by most of a loop (a saturated machine) matches a frame a loop away as well. The
        frame it really is arrived after it was sent, and soonest."""
        if offset is None or self.origin is None:
            return offset
        loop = len(self.source.clip.frames) * self.step

        def score(j: int) -> tuple[int, float]:
            values = self.added((offset + j * loop) % MOD32)
            return sum(1 for x in values if x < 0), statistics.median(values) if values else float("inf")

        return (offset + min(range(-3, 4), key=score) * loop) % MOD32


class JanusError(RuntimeError):
    pass


class JanusPeer:
    """One side of a call through Janus's VideoCall plugin, over its HTTP API."""

    def __init__(self, http: Any, base: str, username: str, clips: dict[str, Any], source_factory: Any) -> None:
        self.http, self.base, self.username = http, base, username
        self.clips, self.source_factory = clips, source_factory
        self.label = username.rsplit("-", 1)[-1]  # caller or callee
        self.session: Optional[int] = None
        self.handle: Optional[int] = None
        #: VideoCall events by name (``registered``, ``incomingcall``...): their whole message.
        self.events: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.error: Optional[JanusError] = None
        self._tasks: list[asyncio.Task[None]] = []
        self.pc: Any = None
        self.sources: dict[str, Any] = {}
        self.received = Received()

    # -- the Janus API --------------------------------------------------------

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = dict(body, transaction=uuid.uuid4().hex)
        async with self.http.post(self.base + path, json=body) as r:
            answer = await r.json(content_type=None)
        if answer.get("janus") == "error":
            raise JanusError(f"{self.username}: {body['janus']} failed: {answer.get('error')}")
        return answer

    async def start(self) -> None:
        self.session = (await self.post("", {"janus": "create"}))["data"]["id"]
        self.handle = (await self.post(f"/{self.session}", {"janus": "attach", "plugin": JANUS_PLUGIN}))["data"]["id"]
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._keepalive())]

    async def message(self, body: dict[str, Any], jsep: Optional[dict[str, Any]] = None) -> None:
        request: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        await self.post(f"/{self.session}/{self.handle}", request)

    async def _poll(self) -> None:
        while True:
            try:
                async with self.http.get(f"{self.base}/{self.session}", params={"maxev": "10"}) as r:
                    got = await r.json(content_type=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.2)
                continue
            if isinstance(got, dict) and got.get("janus") == "error":  # the session is gone: no busy loop
                await asyncio.sleep(0.5)
            for event in got if isinstance(got, list) else [got]:
                data = (event.get("plugindata") or {}).get("data") or {}
                if "error" in data:  # whatever was awaited fails with it
                    self.error = JanusError(f"{self.username}: VideoCall error {data.get('error_code')}: "
                                            f"{data['error']}")
                    for future in self.events.values():
                        if not future.done():
                            future.set_exception(self.error)
                elif (data.get("result") or {}).get("event"):
                    future = self._future(data["result"]["event"])
                    if not future.done():
                        future.set_result(event)

    def _future(self, name: str) -> asyncio.Future[dict[str, Any]]:
        if name not in self.events:
            self.events[name] = asyncio.get_running_loop().create_future()
            if self.error is not None:
                self.events[name].set_exception(self.error)
        return self.events[name]

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE)
            await self.post(f"/{self.session}", {"janus": "keepalive"})

    async def plugin_event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first VideoCall event ``name`` (its whole message, ``jsep`` included)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._future(name)), timeout)
        except asyncio.TimeoutError:
            raise JanusError(f"{self.username}: no {name!r} from Janus in {timeout:.0f} s "
                             f"(had: {sorted(self.events)})") from None

    # -- media ----------------------------------------------------------------

    def _new_pc(self) -> Any:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

        from evr.media.passthrough import on_keyframe_request

        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: nothing off this machine
        for kind in KINDS:
            source = self.sources[kind] = self.source_factory(self.clips[kind])
            transceiver = pc.addTransceiver(source, direction="sendrecv")
            wanted = ("audio/opus",) if kind == "audio" else ("video/vp8", "video/rtx")
            transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities(kind).codecs
                                             if c.mimeType.lower() in wanted])
            if kind == "video":
                on_keyframe_request(transceiver.sender, source.request_keyframe)
        pc.on("track", self._on_track)
        return pc

    def _on_track(self, track: Any) -> None:
        from evr.media.passthrough import attach_sink

        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
        attach_sink(transceiver.receiver, track.kind, self.received.sink(track.kind))
        self.received.watch(track.kind, transceiver.receiver, track.kind)

    def sender_ssrc(self, kind: str) -> int:
        return next(t.sender._ssrc for t in self.pc.getTransceivers() if t.kind == kind)

    def key_from(self, _sender: Any, kind: str) -> str:
        return kind

    async def trickle_done(self) -> None:
        await self.post(f"/{self.session}/{self.handle}", {"janus": "trickle", "candidate": {"completed": True}})

    async def call(self, callee: str) -> None:
        from aiortc import RTCSessionDescription

        pc = self._new_pc()
        await pc.setLocalDescription(await pc.createOffer())  # candidates gathered: the SDP is complete
        await self.message({"request": "call", "username": callee},
                           {"type": "offer", "sdp": pc.localDescription.sdp})
        await self.trickle_done()
        jsep = (await self.plugin_event("accepted"))["jsep"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type=jsep["type"]))

    async def answer(self) -> None:
        from aiortc import RTCSessionDescription

        jsep = (await self.plugin_event("incomingcall"))["jsep"]
        pc = self._new_pc()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type=jsep["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.message({"request": "accept"}, {"type": "answer", "sdp": pc.localDescription.sdp})
        await self.trickle_done()

    async def wait_media(self, timeout: float = 30.0) -> None:
        async def poll() -> None:
            while (len(self.received.rx.get("audio", [])) < 25 or len(self.received.rx.get("video", [])) < 15):
                await asyncio.sleep(0.05)

        try:
            await asyncio.wait_for(poll(), timeout)
        except asyncio.TimeoutError:
            raise JanusError(f"{self.username}: media did not arrive through Janus "
                             f"({ {k: len(v) for k, v in self.received.rx.items()} })") from None

    async def leave(self) -> None:
        if self.session is not None:
            try:
                await self.message({"request": "hangup"})
            except Exception:
                pass
        if self.pc is not None:
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.session is not None:
            try:
                await self.post(f"/{self.session}", {"janus": "destroy"})
            except Exception:
                pass


async def open_janus_call(http: Any, base: str, call: dict[str, Any], clips: dict[str, Any],
                          source_factory: Any) -> list[Any]:
    caller = JanusPeer(http, base, f"{call['id']}-caller", clips, source_factory)
    callee = JanusPeer(http, base, f"{call['id']}-callee", clips, source_factory)
    for peer in (caller, callee):
        await peer.start()
        await peer.message({"request": "register", "username": peer.username})
        await peer.plugin_event("registered")
    await asyncio.gather(caller.call(callee.username), callee.answer())
    await asyncio.gather(caller.wait_media(), callee.wait_media())
    return [caller, callee]


async def open_evr_calls(spec: dict[str, Any], clips: dict[str, Any], source_factory: Any,
                         sessions: list[Any]) -> list[list[Any]]:
    """bench/calls.py's way into EVR: the victim claims the link, the officer logs in."""
    import aiohttp

    import evr.client as client_module

    class EvrPeer(client_module.CallClient):
        def __init__(self, label: str, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.label = label
            self.received = Received()

        def _on_track(self, track: Any) -> None:
            super()._on_track(track)
            transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
            self.received.watch(transceiver.mid or "?", transceiver.receiver, track.kind)

        def _audio_counter(self, mid: str) -> Any:
            return self.received.sink(mid, super()._audio_counter(mid))

        def _video_counter(self, mid: str) -> Any:
            return self.received.sink(mid, super()._video_counter(mid))

        def own_id(self) -> str:
            return next(p["id"] for p in self.state()["participants"] if p.get("you"))

        def key_from(self, sender: "EvrPeer", kind: str) -> str:
            entry = next((p for p in self.state()["participants"] if p["id"] == sender.own_id()), {})
            return (entry.get("mids") or {}).get(kind) or ""

        def sender_ssrc(self, kind: str) -> int:
            return next(t.sender._ssrc for t in self.pc.getTransceivers() if t.sender.track is self.sources[kind])

        async def media_from_other(self) -> None:
            def other_on_mids(m: dict[str, Any]) -> bool:
                return m.get("type") == "state" and any(
                    not p.get("you") and set(KINDS) <= set(p.get("mids") or {}) for p in m.get("participants", []))

            state = await self.wait_for(other_on_mids, timeout=30)
            other = next(p for p in state["participants"] if not p.get("you"))
            await self.wait_from(other["id"], audio=25, video=15, timeout=30)

    base = spec["base"]
    jar = lambda: aiohttp.CookieJar(unsafe=True)  # noqa: E731  (cookies from 127.0.0.1)
    victim_http = aiohttp.ClientSession(cookie_jar=jar(), connector=aiohttp.TCPConnector(limit=0))
    officer_http = aiohttp.ClientSession(cookie_jar=jar(), connector=aiohttp.TCPConnector(limit=0))
    sessions += [victim_http, officer_http]
    async with officer_http.post(base + "/api/login", json={"username": spec["username"],
                                                            "password": spec["password"]}) as r:
        if r.status != 200:
            raise RuntimeError(f"login failed: {r.status} {await r.text()}")
    gate = asyncio.Semaphore(4)
    kwargs = dict(clips=clips, source_factory=source_factory)

    async def open_call(call: dict[str, Any]) -> list[Any]:
        async with gate:
            async with victim_http.get(base + call["join_path"]) as r:
                if r.status != 200:
                    raise RuntimeError(f"victim link answered {r.status}")
            members = [EvrPeer("victim", victim_http, base + call["join_path"] + "/ws", **kwargs),
                       EvrPeer("officer", officer_http, f"{base}/api/consultations/{call['id']}/ws", **kwargs)]
            opened.append(members)
            for member in members:
                await member.join()
            return members

    opened: list[list[Any]] = []
    try:
        result = await asyncio.gather(*(open_call(c) for c in spec["calls"]))
        await asyncio.gather(*(m.media_from_other() for members in result for m in members))
    except BaseException:
        await asyncio.gather(*(m.leave() for members in opened for m in members), return_exceptions=True)
        raise
    return result


async def peers_worker_main(conn: Any, spec: dict[str, Any]) -> None:
    import aiohttp

    from evr.media.sources import opus_clip

    log_packets()

    TimedSource = calls.timed_source()
    clips = {"audio": opus_clip(), "video": spec["video_clip"]}
    loop = asyncio.get_running_loop()

    def command() -> Any:
        if not conn.poll(900):
            raise TimeoutError("no command from the parent for 15 minutes")
        return conn.recv()

    sessions: list[Any] = []
    opened: list[list[Any]] = []
    try:
        if spec["mode"] == "evr":
            opened = await open_evr_calls(spec, clips, TimedSource, sessions)
        else:
            http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            sessions.append(http)
            gate = asyncio.Semaphore(4)

            async def one(call: dict[str, Any]) -> list[Any]:
                async with gate:
                    members = await open_janus_call(http, spec["base"], call, clips, TimedSource)
                    opened.append(members)
                    return members

            opened = list(await asyncio.gather(*(one(c) for c in spec["calls"])))
        conn.send(("joined", len(opened)))

        t_mark = t_end = 0.0
        while True:
            cmd, _arg = await loop.run_in_executor(None, command)
            if cmd in ("mark", "end"):
                if cmd == "mark":
                    t_mark = time.monotonic()
                else:
                    t_end = time.monotonic()
                for source in (s for members in opened for c in members for s in c.sources.values()):
                    setattr(source, cmd, source.sent)
                    setattr(source, f"requests_at_{cmd}", source.keyframe_requests)
                conn.send((cmd, None))
            elif cmd == "report":
                report = []
                for call, (a, b) in zip(spec["calls"], opened, strict=True):
                    for sender, receiver in ((a, b), (b, a)):
                        for kind in KINDS:
                            key = receiver.key_from(sender, kind)
                            rx = receiver.received.rx.get(key, [])
                            source = sender.sources[kind]
                            timing = Timing(source, sender.sender_ssrc(kind), rx, receiver.received.arrivals(key),
                                            kind)
                            stats = calls.direction_stats(source, rx, kind, t_mark, t_end, offset=timing.offset)
                            stats["added"] = stats["added_receiver"] = []
                            if timing.offset is not None:
                                stats["added"] = timing.added(timing.offset)
                                timing.arrivals = receiver.received.arrivals(key, socket=False)
                                stats["added_receiver"] = timing.added(timing.offset)
                            stats.update(call=call["id"], direction=f"{sender.label}->{receiver.label}", kind=kind)
                            report.append(stats)
                conn.send(("report", report))
            elif cmd == "leave":
                break
    finally:
        await asyncio.gather(*(c.leave() for members in opened for c in members), return_exceptions=True)
        for http in sessions:
            await http.close()
    conn.send(("leave", None))


# ---------------------------------------------------------------------------
# Janus (main process)
# ---------------------------------------------------------------------------


def janus_binary() -> Optional[str]:
    return shutil.which("janus") or (os.path.exists("/usr/bin/janus") and "/usr/bin/janus") or None


def jcfg_value(text: str, name: str) -> Optional[str]:
    match = re.search(rf'^\s*{name}\s*=\s*"([^"]*)"', text, re.MULTILINE)
    return match.group(1) if match else None


def module_names(folder: str) -> list[str]:
    """The modules Janus would load from ``folder`` (``libjanus_*.so``)."""
    try:
        return sorted(n for n in os.listdir(folder) if n.endswith(".so"))
    except OSError:
        return []


def janus_config(conf: Path, port: int, system: Path = Path("/etc/janus")) -> Path:
    """A copy of Janus's configuration in ``conf``: only VideoCall and HTTP on 127.0.0.1:port,
    no STUN server, an RTP port range, warnings and errors logged. Returns janus.jcfg."""
    conf.mkdir(parents=True, exist_ok=True)
    for path in system.glob("*.jcfg"):
        shutil.copy(path, conf / path.name)
    original = (system / "janus.jcfg").read_text() if (system / "janus.jcfg").exists() else ""
    lib = "/usr/lib/x86_64-linux-gnu/janus"
    folders = {name: jcfg_value(original, f"{name}_folder") or f"{lib}/{default}"
               for name, default in (("plugins", "plugins"), ("transports", "transports"),
                                     ("events", "events"), ("loggers", "loggers"))}
    disable = {
        "plugins": [n for n in module_names(folders["plugins"]) if n != "libjanus_videocall.so"],
        "transports": [n for n in module_names(folders["transports"]) if n != "libjanus_http.so"],
        "events": module_names(folders["events"]),
        "loggers": module_names(folders["loggers"]),
    }
    if "libjanus_videocall.so" not in module_names(folders["plugins"]):
        raise RuntimeError(f"Janus's VideoCall plugin is not in {folders['plugins']}")

    def disabled(kind: str) -> str:
        return f'\tdisable = "{",".join(disable[kind])}"\n' if disable[kind] else ""

    (conf / "janus.jcfg").write_text(
        "general: {\n"
        f'\tconfigs_folder = "{conf}"\n'
        + "".join(f'\t{name}_folder = "{folder}"\n' for name, folder in folders.items())
        + "\tdebug_level = 3\n"  # warnings and errors
        "\tsession_timeout = 60\n"
        "}\n"
        "certificates: {\n}\n"  # a DTLS certificate made at start
        "media: {\n"
        f'\trtp_port_range = "{RTP_PORTS}"\n'
        "}\n"
        "nat: {\n"  # no stun_server, no turn_server: nothing leaves this machine
        "\tnice_debug = false\n"
        "\tignore_mdns = true\n"
        '\tice_ignore_list = "vmnet"\n'
        "}\n"
        f"plugins: {{\n{disabled('plugins')}}}\n"
        f"transports: {{\n{disabled('transports')}}}\n"
        f"loggers: {{\n{disabled('loggers')}}}\n"
        f"events: {{\n\tbroadcast = false\n{disabled('events')}}}\n"
    )
    (conf / "janus.transport.http.jcfg").write_text(
        "general: {\n"
        '\tjson = "plain"\n'
        '\tbase_path = "/janus"\n'
        "\thttp = true\n"
        f"\tport = {port}\n"
        '\tip = "127.0.0.1"\n'
        "\thttps = false\n"
        "}\n"
        "admin: {\n\tadmin_http = false\n\tadmin_https = false\n}\n"
        "cors: {\n}\n"
    )
    return conf / "janus.jcfg"


def janus_log_problems(path: Path) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if "[ERR]" in line or "[FATAL]" in line]


async def janus_phase(args: argparse.Namespace, tmp: Path, procs: list[subprocess.Popen], clip: Any,
                      binary: str) -> dict[str, Any]:
    import aiohttp

    port = calls.free_port()
    base = f"http://127.0.0.1:{port}/janus"
    jcfg = janus_config(tmp / "janus-conf", port)
    log_path = tmp / "janus.log"
    with open(log_path, "wb") as log:
        janus = subprocess.Popen([binary, "--config", str(jcfg), "--configs-folder", str(jcfg.parent),
                                  "--disable-colors"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(janus)
    try:
        async with aiohttp.ClientSession() as http:
            await calls.wait_healthy(http, base, janus, log_path, path="/info")
        phase_calls = [{"id": f"c{i + 1}"} for i in range(args.calls)]
        result = await calls.run_phase("Janus VideoCall", janus.pid, "janus", base, phase_calls, args, args.seconds,
                                       clip, worker=peers_worker_main)
    finally:
        calls.stop_process(janus)
    result["log_problems"] = janus_log_problems(log_path)
    return result


# ---------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------


def evr_serve_args(workers: Optional[int]) -> tuple[str, ...]:
    if workers is None:
        return ()
    helped = subprocess.run([sys.executable, "-m", "evr", "serve", "--help"], capture_output=True, text=True)
    if "--workers" in helped.stdout:
        print(f"evr serve --workers {workers}", flush=True)
        return ("--workers", str(workers))
    print(f"evr serve does not accept --workers: started without it (asked for {workers})", flush=True)
    return ()


async def bench(args: argparse.Namespace, tmp: Path, procs: list[subprocess.Popen]) -> None:
    from evr.media.sources import opus_clip

    clip = calls.choose_clip(args.vp8_target)
    print(f"clip: {calls.VIDEO_SIZE[0]}x{calls.VIDEO_SIZE[1]} VP8 {clip.bitrate / 1e6:.2f} Mbit/s, "
          f"Opus {opus_clip().bitrate / 1e3:.0f} kbit/s, each way of every call", flush=True)
    binary = None if args.skip_janus else janus_binary()
    if args.skip_janus:
        print("Janus: skipped (--skip-janus)", flush=True)
    elif binary is None:
        print("Janus: not installed (no `janus` on PATH; Debian's package `janus`): measuring EVR alone", flush=True)
    serve_args = evr_serve_args(args.workers) if not args.janus_only else ()

    servers = ([("janus", None)] if binary else []) + ([] if args.janus_only else [("evr", False)]) \
        + ([("evr", True)] if args.recording and not args.janus_only else [])
    if not servers:
        print("nothing to measure (--janus-only without Janus)")
        return
    results: dict[tuple[int, str], list[dict[str, Any]]] = {}
    failed: list[str] = []
    for run in range(args.runs):
        for n in args.calls:
            for server, recording in servers if run % 2 == 0 else servers[::-1]:
                phase_args = argparse.Namespace(**vars(args))
                phase_args.calls, phase_args.workers = n, args.client_workers
                where = tmp / f"run{run + 1}-{n}-{server}{'-rec' if recording else ''}"
                where.mkdir()
                print(f"run {run + 1}/{args.runs}, {n} calls, {label(server, recording)}:", flush=True)
                started = len(procs)
                try:
                    if server == "janus":
                        result = await janus_phase(phase_args, where, procs, clip, binary)
                    else:
                        result, problems = await calls.evr_phase(phase_args, where, procs, clip,
                                                                 recording=recording, serve_args=serve_args,
                                                                 worker=peers_worker_main)
                        result["log_problems"] = problems
                except Exception as error:  # the other phases still run and are reported
                    failed.append(f"run {run + 1}, {n} calls, {label(server, recording)}: {error!r}"[:300])
                    print(f"  failed: {failed[-1]}", flush=True)
                    for log in sorted(where.glob("*.log")):
                        print(f"  --- last lines of {log.name} ---\n{calls.log_tail(log, 15)}", flush=True)
                    continue
                finally:
                    for proc in procs[started:]:  # nothing of this phase's keeps running into the next
                        calls.stop_process(proc)
                results.setdefault((n, label(server, recording)), []).append(result)
    summarize(args, results)
    if failed:
        print(f"\n{len(failed)} phase(s) failed:" + "".join(f"\n  {line}" for line in failed))
        raise SystemExit(1)


def label(server: str, recording: Optional[bool]) -> str:
    if server == "janus":
        return "Janus"
    return "EVR recording" if recording else "EVR"


def ms(values: list[float], q: float) -> str:
    return f"{pct(values, q) * 1e3:.1f}"


def summarize(args: argparse.Namespace, results: dict[tuple[int, str], list[dict[str, Any]]]) -> None:
    print()
    print(f"{args.runs} run(s), {args.seconds:g} s windows; CPU in % of one core (the machine has "
          f"{os.cpu_count()} cores); latency added by the server in ms: a frame's last packet, from one client's "
          f"socket to the other's")
    per_call: dict[tuple[int, str], float] = {}
    added: dict[tuple[int, str], dict[str, list[float]]] = {}
    for (n, name), runs in results.items():
        cpu = [r["cpu"] / r["calls"] for r in runs]
        per_call[n, name] = statistics.median(cpu)
        reports = [row for r in runs for row in r["reports"]]
        added[n, name] = {kind: sorted(x for row in reports if row["kind"] == kind for x in row["added"])
                          for kind in KINDS}
        at_receiver = {kind: sorted(x for row in reports if row["kind"] == kind for x in row["added_receiver"])
                       for kind in KINDS}
        print(f"\n{n} calls, {name}{' (recording every participant)' if name == 'EVR recording' else ''}:")
        spread = f" (runs: {', '.join(f'{c:.2f}' for c in cpu)})" if len(cpu) > 1 else ""
        print(f"  server CPU {statistics.median(r['cpu'] for r in runs):.1f} % = {per_call[n, name]:.2f} % per "
              f"call{spread}; {runs[-1]['threads']} threads")
        for kind in KINDS:
            values = added[n, name][kind]
            total = calls.frame_totals(reports, kind)
            print(f"  {kind}: added p50 {ms(values, .5)} p95 {ms(values, .95)} p99 {ms(values, .99)} ms "
                  f"(min {ms(values, 0)}, max {ms(values, 1)}; {len(values)} of {total['delivered']} frames timed)")
            print(f"    to the client's RTCRtpReceiver p50 {ms(at_receiver[kind], .5)} p99 "
                  f"{ms(at_receiver[kind], .99)} ms; through its jitter buffer p50 {ms(total['latency'], .5)} ms")
        print_losses(reports)
        busy = statistics.mean(r["machine_busy"] for r in runs)
        clients = statistics.mean(r["clients_cpu"] for r in runs)
        other = statistics.mean(r["machine_busy_cores"] - r["cpu"] - r["clients_cpu"] for r in runs)
        print(f"  load: machine busy {busy:.0f} % of {os.cpu_count()} cores; client processes {clients:.0f} % of "
              f"one core ({min(args.client_workers, n)} worker(s)); anything else (the kernel's loopback, "
              f"other programs): {max(0.0, other):.0f} % of one core")
        problems = [p for r in runs for p in r.get("log_problems") or []]
        if problems:
            print(f"  server log: {len(problems)} error line(s), e.g. {problems[0][:160]}")

    print()
    for n in args.calls:
        janus = per_call.get((n, "Janus"))
        for name in ("EVR", "EVR recording"):
            if janus and (n, name) in per_call:
                print(f"{n} calls: {name} / Janus CPU per call = {per_call[n, name]:.2f} / {janus:.2f} = "
                      f"{per_call[n, name] / janus:.2f}")

    print()
    for name, target in (("EVR", TARGET_CPU_RATIO), ("EVR recording", TARGET_CPU_RATIO_RECORDING)):
        if name == "EVR recording" and not args.recording:
            continue
        for n in TARGET_CPU_CALLS:
            what = f"target: {name} / Janus CPU per call <= {target:g} at {n} calls: "
            if (n, "Janus") in per_call and (n, name) in per_call:
                ratio = per_call[n, name] / per_call[n, "Janus"]
                print(what + f"{verdict(ratio <= target)} ({ratio:.2f})")
            else:
                missing = "Janus" if (n, name) in per_call else name if (n, "Janus") in per_call else f"{n}-call"
                print(what + f"not measured (no {missing} run)")
    n = TARGET_LATENCY_CALLS
    for kind in KINDS:
        what = f"target: EVR adds {kind} latency p50 < {TARGET_ADDED_P50 * 1e3:g} ms, p99 < " \
               f"{TARGET_ADDED_P99 * 1e3:g} ms at {n} calls: "
        values = added.get((n, "EVR"), {}).get(kind)
        if values:
            ok = pct(values, .5) < TARGET_ADDED_P50 and pct(values, .99) < TARGET_ADDED_P99
            print(what + f"{verdict(ok)} (p50 {ms(values, .5)} ms, p99 {ms(values, .99)} ms)")
        else:
            print(what + f"not measured (no {n}-call EVR run)")


def print_losses(reports: list[dict[str, Any]]) -> None:
    """Frames lost in each direction (by content, the window's frames)."""
    for kind in KINDS:
        rows = [r for r in reports if r["kind"] == kind]
        lost = [(r, r["sent"] - r["delivered"]) for r in rows if r["delivered"] is not None]
        unmatched = sum(1 for r in rows if r["delivered"] is None)
        sent = sum(r["sent"] for r in rows)
        worst = max((x for _r, x in lost), default=0)
        line = (f"  {kind} frames lost: {sum(x for _r, x in lost)} of {sent} over {len(rows)} directions "
                f"(worst direction {worst})")
        if unmatched:
            line += f"; {unmatched} direction(s) could not be matched frame by frame"
        print(line)
        for r, x in [(r, x) for r, x in lost if x]:
            print(f"    call {r['call']} {r['direction']}: {x} of {r['sent']} (window frames {r['missing'][:10]})")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, nargs="+", default=[8, 16],
                        help="concurrent 1:1 calls, one phase per number (default 8 16)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window (default 15)")
    parser.add_argument("--runs", type=int, default=1, help="repeat every phase (default 1); CPU: the median")
    parser.add_argument("--recording", action="store_true", help="also run EVR with recording on")
    parser.add_argument("--skip-janus", action="store_true", help="measure EVR alone")
    parser.add_argument("--evr-only", dest="skip_janus", action="store_true", help="the same as --skip-janus")
    parser.add_argument("--janus-only", action="store_true", help="measure Janus alone")
    parser.add_argument("--workers", type=int, default=None,
                        help="passed to `evr serve --workers N` when its --help names --workers (else left out)")
    parser.add_argument("--client-workers", type=int, default=2, help="client worker processes (default 2)")
    calls.add_phase_options(parser)
    args = parser.parse_args(argv)
    if min(args.calls) < 1 or args.seconds <= 0 or args.runs < 1 or args.client_workers < 1:
        parser.error("--calls, --seconds, --runs and --client-workers must be positive")
    if args.janus_only and args.skip_janus:
        parser.error("--janus-only and --skip-janus leave nothing to measure")

    return calls.run_bench(bench, args, "evr-peers-")


if __name__ == "__main__":
    sys.exit(main())
