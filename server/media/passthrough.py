"""Passthrough hooks into aiortc: RTP packets forwarded as they arrive, no codec runs.

aiortc decodes every received frame in a per-receiver thread, encodes every frame
it sends, and hands a frame on only when its jitter buffer has it whole (a video
frame leaves when the next one starts: one frame interval of delay). These hooks
(private API of aiortc 1.16.0, pinned in pyproject.toml and exercised by
tests/test_passthrough.py) replace that with what a C media server does:

- each receiver's packets go, decrypted and RTX unwrapped, to an
  :class:`InboundStream` callback in place of aiortc's own handling (the live
  path), straight from the socket's callback (:class:`DirectReceive`), and its
  forwarded copies straight back to the sockets (:func:`send_rtp`);
- an :class:`OutboundStream` is the track of an ``RTCRtpSender`` that never
  yields a frame: packets are rewritten for the outgoing stream (SSRC, payload
  type, sequence numbers and timestamps, see :mod:`evr.media.rtp`) and written into
  the sender's send history, so aiortc answers the watcher's NACKs (RTX) from it;
- frames are assembled only for a sink (the recorder) and only while one wants
  them, by :mod:`evr.media.frames` after each packet has been forwarded;
- an :class:`EncodedFrameSink` replaces every receiver's decoder queue, so its
  decoder thread exits at once (a client, :mod:`evr.client`, gets its frames from
  aiortc's jitter buffer through it, decoding nothing);
- a sender's keyframe request (a PLI/FIR from the far end) is routed to a callback
  instead of a flag only an encoder reads; a watcher's REMB reaches its source's
  :class:`InboundStream`, which sends the sender's browser the lowest of its
  watchers' (packets keep their sender's ``abs-send-time``, so each estimate
  covers the whole path).

A newer aiortc can rename any of these private names; the hooks would then fail
silently (a decoder thread per receiver again, keyframe requests lost) or half way
through a call. :func:`check_compatible` is run at start (``evr.app``) and refuses to
start, naming every hook whose private name or shape is missing, rather than
finding out from a victim's frozen picture.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import types
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Hashable, Optional

import aiortc
import pylibsrtp
from aiortc import RTCDtlsTransport, RTCRtpReceiver, RTCRtpSender, clock, rtcrtpreceiver
from aiortc.codecs import is_rtx
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTP_HISTORY_SIZE,
    RtcpPsfbPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
    unwrap_rtx,
)
from aiortc.utils import random16, random32, uint16_gt

from ..tasks import TaskSet
from .frames import assembler
from .rtp import PacketWriter, Rewriter, vp8_is_keyframe, vp8_keyframe_start

log = logging.getLogger(__name__)

#: RTP clock rates of the pinned codecs.
CLOCK_RATE = {"audio": 48000, "video": 90000}
TIME_BASE = {kind: Fraction(1, rate) for kind, rate in CLOCK_RATE.items()}


@dataclass(slots=True)
class EncodedFrame:
    """One complete encoded frame (a VP8 frame or an Opus packet).

    Duck-typed as the ``av.Packet`` that aiortc's ``pack()`` reads: ``bytes()``,
    ``pts`` and ``time_base``. Nothing on the live path copies ``data``.
    """

    data: bytes
    pts: int
    time_base: Fraction
    is_keyframe: bool
    #: Monotonic arrival time at the server (seconds).
    arrival: float

    def __bytes__(self) -> bytes:
        return self.data


class EncodedFrameSink:
    """Stands in for a receiver's decoder queue (``queue.Queue.put`` is all it needs)."""

    def __init__(self, kind: str, on_frame: Callable[[EncodedFrame], None], track_queue: asyncio.Queue) -> None:
        self.kind = kind
        self.on_frame = on_frame
        self.track_queue = track_queue

    def put(self, item: Optional[tuple[Any, Any]]) -> None:
        if item is None:  # the receiver stopped: end its track
            self.track_queue.put_nowait(None)
            return
        codec, jitter_frame = item
        data = jitter_frame.data
        keyframe = vp8_is_keyframe(data) if self.kind == "video" else True
        self.on_frame(
            EncodedFrame(data, jitter_frame.timestamp, TIME_BASE[self.kind], keyframe, time.monotonic())
        )


#: aiortc's own decoder worker, kept when :func:`install` replaces it.
_stock_decoder_worker: Optional[Callable[..., None]] = None


def _decoder_worker(loop: Any, input_q: Any, output_q: Any, decode_error: Any) -> None:
    if isinstance(input_q, EncodedFrameSink):
        return  # passthrough receiver: nothing to decode, the thread ends here
    assert _stock_decoder_worker is not None  # set by install() before this is reachable
    _stock_decoder_worker(loop, input_q, output_q, decode_error)


def install() -> None:
    """Make receivers with a sink skip their decoder thread (others keep decoding)."""
    global _stock_decoder_worker
    if rtcrtpreceiver.decoder_worker is not _decoder_worker:
        _stock_decoder_worker = rtcrtpreceiver.decoder_worker
        rtcrtpreceiver.decoder_worker = _decoder_worker


def attach_sink(receiver: RTCRtpReceiver, kind: str, on_frame: Callable[[EncodedFrame], None]) -> None:
    """Make ``receiver`` pass encoded frames to ``on_frame``; call before it starts."""
    install()
    if receiver.track is None:
        raise RuntimeError("receiver has no track yet: attach after setRemoteDescription")
    receiver._RTCRtpReceiver__decoder_queue = EncodedFrameSink(kind, on_frame, receiver.track._queue)  # type: ignore[attr-defined]
    if kind == "audio":
        # The stock audio buffer (capacity 16, prefetch 4) adds ~80 ms; this one ~20 ms.
        receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=4, prefetch=0)  # type: ignore[attr-defined]


#: Keyframe requests being sent (kept until sent; a failure is logged).
_pli_tasks = TaskSet("passthrough")


def media_ssrc(receiver: RTCRtpReceiver) -> Optional[int]:
    """The SSRC of the media stream (not its RTX stream) most recently heard from.

    A keyframe request must name the media SSRC: Chrome ignores a PLI for its
    retransmission stream, which ``getSynchronizationSources()`` also lists.
    """
    rtx: dict[int, int] = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
    sources = [s for s in receiver.getSynchronizationSources() if s.source not in rtx]
    if not sources:
        return None
    return max(sources, key=lambda s: s.timestamp).source


def send_pli(receiver: RTCRtpReceiver) -> bool:
    """Ask the far end of ``receiver`` for a keyframe. False when nothing has arrived yet."""
    media = media_ssrc(receiver)
    if media is None:
        return False
    _pli_tasks.spawn(receiver._send_rtcp_pli(media), "keyframe request")
    return True


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Route a PLI/FIR received by ``sender`` to ``callback``."""
    sender._send_keyframe = callback  # type: ignore[method-assign]


#: Re-send an unchanged REMB this often (a browser forgets one after a few seconds).
REMB_INTERVAL = 1.0
#: How often a receiver's "last heard" time of an SSRC is refreshed (seconds).
HEARD_EVERY = 0.25


class InboundStream:
    """One receiver of a participant's media, hooked so that each RTP packet goes
    to ``on_packet`` (the live path) as soon as it is decrypted.

    A retransmission (RTX) is unwrapped first, so a packet repaired upstream is
    forwarded like any other; RTX padding (bandwidth probes) is not forwarded. After
    forwarding, what aiortc's receiver keeps is kept here, leaner: the statistics its
    receiver reports are made of, the SSRCs last heard from, and the NACKs it sends
    upstream for missing packets; and, while :meth:`frames` are wanted (a
    recording), the packet goes into an :mod:`evr.media.frames` assembler, whose
    whole frames go to ``on_frame``. aiortc's own handling never runs: no jitter
    buffer, no decoder.

    The server makes no bandwidth estimate of its own: each packet keeps its
    sender's ``abs-send-time``, so a watcher's REMB estimates the whole path, and
    the sender's browser is sent the lowest of its watchers' (:meth:`set_limit`).
    """

    def __init__(self, receiver: RTCRtpReceiver, kind: str,
                 on_packet: Callable[[RtpPacket, float], None],
                 on_frame: Callable[[EncodedFrame], None] = lambda _frame: None) -> None:
        self.receiver = receiver
        self.kind = kind
        self.on_packet = on_packet
        self.on_frame = on_frame
        self.framing = False
        self._assembler = assembler(kind)
        self._time_base = TIME_BASE[kind]
        self._codecs: dict[int, Any] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
        self._rtx_ssrc: dict[int, int] = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
        self._heard: dict[int, Any] = receiver._RTCRtpReceiver__active_ssrc  # type: ignore[attr-defined]
        self._streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        self._nacks: Optional[NackGenerator] = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        self._heard_at: dict[int, float] = {}
        #: Per payload type: its codec, whether it is RTX, and the payload type an RTX
        #: one repairs (read once, not on every packet).
        self._types: dict[int, tuple[Any, bool, Any]] = {}
        receiver._handle_rtp_packet = self._handle  # type: ignore[method-assign]
        receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]
        #: What the watchers can take (bps; None: none said).
        self.limit: Optional[int] = None
        self._remb_sent: Optional[int] = None
        self._remb_at = 0.0

    def frames(self, wanted: bool) -> None:
        """Assemble frames for ``on_frame`` (a recording) from the next packet on, or stop."""
        if wanted and not self.framing:
            self._assembler = assembler(self.kind)
        self.framing = wanted

    async def _handle(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        """aiortc's receive path: a packet of an SSRC the :class:`DirectReceive`
        does not know yet (the router learns it here, by payload type)."""
        self.accept(packet)

    def accept(self, packet: RtpPacket) -> None:
        """Forward one decrypted packet, then keep what the receiver keeps and, while
        :attr:`framing`, add it to the frame being assembled (a packet of a payload
        type the receiver does not know, or of a stopped receiver, is dropped)."""
        known = self._types.get(packet.payload_type)
        if known is None:
            codec = self._codecs.get(packet.payload_type)
            if codec is None:
                return
            rtx = is_rtx(codec)
            known = self._types[packet.payload_type] = (codec, rtx, codec.parameters.get("apt") if rtx else None)
        codec, rtx, apt = known
        if not self.receiver._enabled:
            return
        media: Optional[RtpPacket] = packet
        if rtx:  # a retransmission: the packet it carries
            original = self._rtx_ssrc.get(packet.ssrc)
            media = (unwrap_rtx(packet, payload_type=apt, ssrc=original)
                     if original is not None and len(packet.payload) >= 2 and apt in self._codecs else None)
        now = time.monotonic()
        if media is not None:
            try:
                self.on_packet(media, now)
            except Exception:  # the live path must never end the receiver's transport
                log.exception("forwarding an RTP packet failed")
            if self.framing:  # after the packet has gone: the recording is never on the live path
                self._assemble(media, now)
        if now - self._heard_at.get(packet.ssrc, 0.0) >= HEARD_EVERY:
            self._heard_at[packet.ssrc] = now
            self._heard[packet.ssrc] = clock.current_datetime()
        stats = self._streams.get(packet.ssrc)
        if stats is None:
            stats = self._streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stats.add(packet)
        if media is not None and self._nacks is not None and self._nacks.add(media):
            _pli_tasks.spawn(self.receiver._send_rtcp_nack(media.ssrc, sorted(self._nacks.missing)), "NACK")

    def _assemble(self, packet: RtpPacket, now: float) -> None:
        assembler = self._assembler
        dropped = assembler.dropped
        for frame in assembler.add(packet.sequence_number, packet.timestamp, packet.marker, packet.payload):
            try:
                self.on_frame(EncodedFrame(frame.data, frame.timestamp, self._time_base, frame.keyframe, now))
            except Exception:  # a sink's failure is the sink's (the bridge detaches it)
                log.exception("a frame sink failed")
        if assembler.dropped != dropped:  # the frames after a lost one need a keyframe
            send_pli(self.receiver)

    # -- bandwidth ------------------------------------------------------------

    def set_limit(self, bitrate: Optional[int]) -> None:
        """What the watchers of this stream can take now (None: no limit known)."""
        if bitrate != self.limit:
            self.limit = bitrate
            self._send_remb()

    def _send_remb(self) -> None:
        bitrate = self.limit
        if bitrate is None:
            return
        now = time.monotonic()
        if bitrate == self._remb_sent and now - self._remb_at < REMB_INTERVAL:
            return
        rtcp_ssrc = self.receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
        ssrcs = [s for s in (media_ssrc(self.receiver),) if s is not None]
        if rtcp_ssrc is None or not ssrcs:
            return
        self._remb_sent, self._remb_at = bitrate, now
        packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(bitrate, ssrcs))
        _pli_tasks.spawn(self.receiver._send_rtcp(packet), "bandwidth estimate")


#: How long a watcher's bandwidth estimate counts without a newer one.
REMB_FRESH = 5.0
#: How often an outgoing stream sets the NTP and RTP clocks its sender reports (SR)
#: carry: a report is sent about once a second, and reading the wall clock on every
#: packet would cost more than the rest of the rewrite.
SENDER_CLOCK_EVERY = 0.1


class SentPacket:
    """A packet in a sender's send history, kept as the bytes sent.

    aiortc's ``_retransmit`` looks a NACKed sequence number up, checks
    ``sequence_number`` and either serializes the packet again (no RTX: the bytes
    sent are the answer) or wraps it for RTX, which reads its fields: those are
    parsed then, for the few packets ever asked for, not for every one forwarded.
    """

    __slots__ = ("data", "sequence_number", "_extensions_map", "_parsed")

    def __init__(self, data: bytes, sequence_number: int, extensions_map: Any) -> None:
        self.data = data
        self.sequence_number = sequence_number
        self._extensions_map = extensions_map
        self._parsed: Optional[RtpPacket] = None

    def serialize(self, extensions_map: Any = None) -> bytes:
        return self.data

    def __getattr__(self, name: str) -> Any:
        if self._parsed is None:
            self._parsed = RtpPacket.parse(self.data, self._extensions_map)
        return getattr(self._parsed, name)


class OutboundStream(MediaStreamTrack):
    """One outgoing RTP stream of a leg, fed with packets of another participant.

    It is the track its ``RTCRtpSender`` is given, but it never yields a frame: the
    sender's own loop waits for ever and encodes nothing. :meth:`forward` writes each
    source packet past it, rewritten for this stream (its SSRC, payload type and
    mid; sequence numbers and timestamps through a :class:`Rewriter`), into the
    sender's send history, which answers the watcher's NACKs (by RTX where
    negotiated), and into the sender's counters, which its RTCP sender reports use.

    - Nothing is sent before the sender has started and its transport is up; video
      then starts at a keyframe, requested upstream until one comes.
    - A source change (a rejoin, or another participant) continues the stream:
      video waits for the new source's keyframe.
    - A watcher's REMB is kept (:attr:`bitrate`) and reported to ``on_bitrate``.
    """

    def __init__(self, kind: str, request_keyframe: Callable[[], None],
                 on_sent: Callable[[int], None],
                 on_bitrate: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.kind = kind
        self.request_keyframe = request_keyframe
        self._on_sent = on_sent
        self._on_bitrate = on_bitrate
        self.rewriter = Rewriter(CLOCK_RATE[kind], random16(), random32())
        self._sender: Optional[RTCRtpSender] = None
        self._payload_type: Optional[int] = None
        self._mid: Optional[str] = None
        self._history: dict[int, Any] = {}
        #: Serializes this stream's packets (None: aiortc's way, see PacketWriter.usable).
        self._writer: Optional[PacketWriter] = None
        self._extensions_map: Any = None
        self._need_keyframe = kind == "video"
        #: While waiting for a keyframe: the source and the newest sequence number passed over.
        self._passed: Optional[tuple[Hashable, int]] = None
        self._ended: Optional[asyncio.Future[None]] = None
        #: The watcher's latest REMB (bps) and when it came.
        self._bitrate: Optional[int] = None
        self._bitrate_at = 0.0
        #: When the sender's report clocks were last set (monotonic seconds).
        self._reported_at = -SENDER_CLOCK_EVERY

    # -- wiring to the sender -------------------------------------------------

    def attach(self, sender: RTCRtpSender) -> None:
        """Become ``sender``'s track; learn its parameters when it starts."""
        self._sender = sender
        self._history = sender._RTCRtpSender__rtp_history  # type: ignore[attr-defined]
        self._extensions_map = sender._RTCRtpSender__rtp_header_extensions_map  # type: ignore[attr-defined]
        stock_send = sender.send
        stock_rtcp = sender._handle_rtcp_packet

        async def send(parameters: Any) -> None:
            if parameters.codecs:
                self._payload_type = parameters.codecs[0].payloadType
            self._mid = parameters.muxId
            await stock_send(parameters)
            if self._payload_type is not None:
                writer = PacketWriter(self._payload_type, sender._ssrc, self._mid,
                                      {e.uri: e.id for e in parameters.headerExtensions})
                self._writer = writer if writer.usable else None

        async def handle_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                try:
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                except ValueError:
                    bitrate, ssrcs = 0, []
                if sender._ssrc in ssrcs:
                    self._bitrate, self._bitrate_at = bitrate, time.monotonic()
                    self._on_bitrate()
            await stock_rtcp(packet)

        sender.send = send  # type: ignore[method-assign]
        sender._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]
        on_keyframe_request(sender, self.request_keyframe)
        sender.replaceTrack(self)

    @property
    def bitrate(self) -> Optional[int]:
        """What the watcher said it can take (bps), if it said so lately."""
        if self._bitrate is None or time.monotonic() - self._bitrate_at > REMB_FRESH:
            return None
        return self._bitrate

    # -- the live path --------------------------------------------------------

    def restart(self) -> None:
        """The source changed or the call resumed: video waits for a keyframe."""
        if self.kind == "video":
            self._need_keyframe = True

    def _passed_over(self, source: Hashable, sequence_number: int) -> bool:
        passed = self._passed
        return passed is not None and passed[0] == source and uint16_gt(passed[1], sequence_number)

    def forward(self, packet: RtpPacket, source: Hashable, arrival: float) -> None:
        """Send one source packet on this stream (or drop it, when it cannot start it)."""
        sender = self._sender
        if (self.readyState != "live" or sender is None or self._payload_type is None
                or sender.transport._state is not DtlsState.CONNECTED):  # not .state: an Enum's str
            return
        if self._need_keyframe or source != self.rewriter.source:
            if self.kind == "video" and (not vp8_keyframe_start(packet.payload)
                                         or self._passed_over(source, packet.sequence_number)):
                # Not a start, or a start older than a packet already passed over (it
                # came late): starting there would leave that packet out for good.
                passed = self._passed
                if passed is None or passed[0] != source or uint16_gt(packet.sequence_number, passed[1]):
                    self._passed = (source, packet.sequence_number)
                self._need_keyframe = True
                self.request_keyframe()  # the source spaces its requests (PLI_INTERVAL)
                return
            self._need_keyframe = False
            self._passed = None
            self.rewriter.switch(source, packet.sequence_number, packet.timestamp, arrival)
        mapped = self.rewriter.map(packet.sequence_number, packet.timestamp, arrival)
        # The sender's own send time, so a watcher's REMB estimates the whole path.
        sent = packet.extensions.abs_send_time
        if sent is None:
            sent = (clock.current_ntp_time() >> 14) & 0x00FFFFFF
        writer = self._writer
        if writer is not None and not packet.padding_size:
            data = writer.write(packet.marker, mapped.sequence_number, mapped.timestamp, packet.payload,
                                sent, packet.extensions.audio_level)
            self._history[mapped.sequence_number % RTP_HISTORY_SIZE] = SentPacket(
                data, mapped.sequence_number, self._extensions_map)
        else:
            out = RtpPacket(payload_type=self._payload_type, marker=packet.marker,
                            sequence_number=mapped.sequence_number, timestamp=mapped.timestamp,
                            ssrc=sender._ssrc, payload=packet.payload)
            out.padding_size = packet.padding_size
            out.extensions.mid = self._mid
            out.extensions.abs_send_time = sent
            out.extensions.audio_level = packet.extensions.audio_level
            self._history[mapped.sequence_number % RTP_HISTORY_SIZE] = out
            data = out.serialize(self._extensions_map)
        if not send_rtp(sender.transport, data):
            return
        if arrival - self._reported_at >= SENDER_CLOCK_EVERY:
            # The pair of clocks the sender's reports (SR) carry: the same instant.
            self._reported_at = arrival
            sender._RTCRtpSender__ntp_timestamp = clock.current_ntp_time()  # type: ignore[attr-defined]
            sender._RTCRtpSender__rtp_timestamp = mapped.timestamp  # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count += len(packet.payload)  # type: ignore[attr-defined]
        sender._RTCRtpSender__packet_count += 1  # type: ignore[attr-defined]
        self._on_sent(packet.marker)

    async def recv(self) -> Any:
        """The sender's loop waits here until the stream stops: nothing is encoded."""
        if self.readyState == "live":
            if self._ended is None:
                self._ended = asyncio.get_running_loop().create_future()
            await self._ended
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)


# -- straight from the socket and back -------------------------------------------


def _is_rtp(data: bytes) -> bool:
    """RTP, not RTCP (RFC 5761 4: RTCP packet types 192-223 sit where the marker
    bit and payload type are) nor DTLS or STUN (RFC 7983)."""
    return len(data) >= 12 and 127 < data[0] < 192 and not 191 < data[1] < 224


def send_rtp(dtls: RTCDtlsTransport, data: bytes) -> bool:
    """Protect one RTP packet and hand it to the socket now; False when it could not go.

    What ``RTCDtlsTransport._send_rtp`` does, without its four awaits per packet:
    the packet goes out in the same callback that received its source. The socket is
    the ICE connection's nominated pair's (its protocol's ``transport``, a TURN
    allocation's when relayed). A sequence number already protected (a packet that
    arrived twice, say late and again by RTX) is refused by libsrtp and dropped: the
    watcher has it.
    """
    if dtls._state is not DtlsState.CONNECTED:
        return False
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None:
        return False
    try:
        protected = dtls._tx_srtp.protect(data)
    except pylibsrtp.Error:
        return False
    try:
        pair.protocol.transport.sendto(protected, pair.remote_addr)
    except (OSError, RuntimeError):  # the socket closed under a connection still marked up
        return False
    dtls._RTCDtlsTransport__tx_bytes += len(protected)  # type: ignore[attr-defined]
    dtls._RTCDtlsTransport__tx_packets += 1  # type: ignore[attr-defined]
    return True


class DirectReceive:
    """One connection's RTP packets handled in the callback its socket delivers
    them to, not after a trip through aiortc's queue and DTLS transport task.

    aioice gives every datagram that is not STUN to its ``Connection``'s
    ``data_received``, which queues it for the DTLS transport's task; that task
    decrypts, parses and routes it through four awaits. Here a packet whose SSRC the
    transport's router already knows, for a receiver with an :class:`InboundStream`,
    is decrypted, parsed and given to :meth:`InboundStream.accept` at once, and its
    forwarded copies are sent from the same callback (:func:`send_rtp`). Everything
    else (DTLS, RTCP, and the first packets of a new SSRC, which the router learns
    by payload type) goes the stock way, unchanged; and so does every packet while
    the stock queue holds one, so that no packet overtakes another.
    """

    def __init__(self, dtls: RTCDtlsTransport, inbound: dict[RTCRtpReceiver, InboundStream]) -> None:
        self.dtls = dtls
        #: The leg's receivers' hooks (shared: a receiver added later is found too).
        self.inbound = inbound
        self._receivers = dtls._rtp_router.ssrc_table
        self._extensions = dtls._rtp_header_extensions_map
        connection = dtls.transport._connection
        #: aiortc's queue of datagrams for the DTLS transport's task.
        self._queue: asyncio.Queue[Any] = connection._queue
        self._stock = connection.data_received
        connection.data_received = self.data_received  # type: ignore[method-assign]

    def data_received(self, data: bytes, component: int) -> None:
        # Never overtake a datagram still queued for the stock path: the first packets
        # of a stream (queued while its SSRC was unknown) must leave first, or the
        # stream's start would be reordered, and a keyframe's first packet lost to a
        # watcher that needed it.
        if _is_rtp(data) and not self._queue.qsize():
            receiver = self._receivers.get(int.from_bytes(data[8:12], "big"))
            inbound = self.inbound.get(receiver) if receiver is not None else None  # type: ignore[call-overload]
            dtls = self.dtls
            srtp = dtls._rx_srtp
            if inbound is not None and srtp is not None and dtls._state is DtlsState.CONNECTED:
                dtls._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
                dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
                try:
                    packet = RtpPacket.parse(srtp.unprotect(data), self._extensions)
                except (pylibsrtp.Error, ValueError):  # as aiortc: a packet that fails is dropped
                    return
                inbound.accept(packet)
                return
        self._stock(data, component)


def receive_directly(dtls: RTCDtlsTransport, inbound: dict[RTCRtpReceiver, InboundStream]) -> None:
    """Install a :class:`DirectReceive` on ``dtls``'s connection (once)."""
    connection = dtls.transport._connection
    if not isinstance(getattr(connection.data_received, "__self__", None), DirectReceive):
        DirectReceive(dtls, inbound)


# -- the start-up check ----------------------------------------------------------


class IncompatibleAiortc(RuntimeError):
    """The installed aiortc lacks something the passthrough hooks rely on."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"aiortc {aiortc.__version__} cannot carry EVR's passthrough media (the hooks in "
            f"evr.media.passthrough were written for aiortc 1.16.0): " + "; ".join(problems)
        )


def _code_names(code: types.CodeType) -> set[str]:
    """The global and attribute names a function's code uses (nested code included)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _uses(owner: type, attr: str, *names: str) -> list[str]:
    """Problems unless ``owner.attr`` is a function whose code uses every one of ``names``."""
    where = f"{owner.__module__}.{owner.__qualname__}.{attr}"
    func = owner.__dict__.get(attr)
    code = getattr(func, "__code__", None)
    if code is None:
        return [f"{where} is missing"]
    missing = sorted(set(names) - _code_names(code))
    return [f"{where} no longer uses {', '.join(missing)}"] if missing else []


def _parameters(func: Any, where: str, expected: tuple[str, ...]) -> list[str]:
    """Problems unless ``func`` takes exactly the positional parameters ``expected``."""
    if not callable(func):
        return [f"{where} is missing"]
    names = tuple(inspect.signature(func).parameters)
    if names != expected:
        return [f"{where} takes ({', '.join(names)}), not ({', '.join(expected)})"]
    return []


def _check_decoder_worker() -> list[str]:
    """The receiver starts its decoder thread with the module's ``decoder_worker``,
    passing (loop, decoder queue, track queue, error flag): :func:`install` swaps it."""
    current = getattr(rtcrtpreceiver, "decoder_worker", None)
    worker = _stock_decoder_worker if current is _decoder_worker else current  # installed: check aiortc's
    return _parameters(worker, "aiortc.rtcrtpreceiver.decoder_worker",
                       ("loop", "input_q", "output_q", "decode_error")) + _uses(
        RTCRtpReceiver, "receive", "decoder_worker", "_RTCRtpReceiver__decoder_queue", "_track", "_queue")


def _check_decoder_queue() -> list[str]:
    """The receiver puts ``(codec, JitterFrame)`` into ``__decoder_queue`` and ``None``
    when it stops; :func:`attach_sink` replaces that queue with an
    :class:`EncodedFrameSink`, which ends the track through its ``_queue``."""
    from aiortc.rtcrtpreceiver import RemoteStreamTrack

    return (_uses(RTCRtpReceiver, "__init__", "_RTCRtpReceiver__decoder_queue")
            + _uses(RTCRtpReceiver, "_handle_rtp_packet", "_RTCRtpReceiver__decoder_queue", "put")
            + _uses(RTCRtpReceiver, "_RTCRtpReceiver__stop_decoder", "_RTCRtpReceiver__decoder_queue", "put")
            + _uses(JitterFrame, "__init__", "data", "timestamp")
            + _uses(RemoteStreamTrack, "__init__", "_queue"))


def _check_jitter_buffer() -> list[str]:
    """Frames are assembled (``__jitter_buffer``) only when a sink wants them
    (:meth:`InboundStream.frames`); audio gets a shorter buffer (:func:`attach_sink`)."""
    problems = (_uses(RTCRtpReceiver, "__init__", "_RTCRtpReceiver__jitter_buffer")
                + _uses(RTCRtpReceiver, "_handle_rtp_packet", "_RTCRtpReceiver__jitter_buffer", "add"))
    parameters = inspect.signature(JitterBuffer).parameters
    if not {"capacity", "prefetch"} <= set(parameters):
        problems.append(f"aiortc.jitterbuffer.JitterBuffer takes ({', '.join(parameters)}), not capacity and prefetch")
    return problems


def _check_keyframe_upstream() -> list[str]:
    """:func:`send_pli` names the media SSRC (not its RTX stream, from ``__rtx_ssrc``)
    and sends the PLI with ``_send_rtcp_pli``."""
    problems = (_uses(RTCRtpReceiver, "__init__", "_RTCRtpReceiver__rtx_ssrc")
                + _uses(RTCRtpReceiver, "receive", "_RTCRtpReceiver__rtx_ssrc")
                + _parameters(RTCRtpReceiver.__dict__.get("_send_rtcp_pli"),
                              "aiortc.RTCRtpReceiver._send_rtcp_pli", ("self", "media_ssrc")))
    if not inspect.iscoroutinefunction(RTCRtpReceiver.__dict__.get("_send_rtcp_pli")):
        problems.append("aiortc.RTCRtpReceiver._send_rtcp_pli is not a coroutine function")
    if not callable(getattr(RTCRtpReceiver, "getSynchronizationSources", None)):
        problems.append("aiortc.RTCRtpReceiver.getSynchronizationSources is missing")
    return problems


def _check_keyframe_request() -> list[str]:
    """A PLI/FIR received by a sender calls its ``_send_keyframe`` (:func:`on_keyframe_request`)."""
    return (_parameters(RTCRtpSender.__dict__.get("_send_keyframe"), "aiortc.RTCRtpSender._send_keyframe", ("self",))
            + _uses(RTCRtpSender, "_handle_rtcp_packet", "_send_keyframe"))


def _check_packets_in() -> list[str]:
    """The DTLS transport hands each decrypted packet to the receiver's
    ``_handle_rtp_packet`` (replaced per receiver by :class:`InboundStream`), which
    knows the codecs by payload type (``__codecs``) and the RTX streams
    (``__rtx_ssrc``), and keeps what the stock handler keeps: the SSRCs heard
    (``__active_ssrc``), the statistics its reports read (``__remote_streams`` of
    ``StreamStatistics``) and the NACKs of its ``__nack_generator``."""
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    problems = (_uses(RTCDtlsTransport, "_handle_rtp_data", "_handle_rtp_packet")
                + _parameters(RTCRtpReceiver.__dict__.get("_handle_rtp_packet"),
                              "aiortc.RTCRtpReceiver._handle_rtp_packet", ("self", "packet", "arrival_time_ms"))
                + _uses(RTCRtpReceiver, "__init__", "_RTCRtpReceiver__codecs", "_enabled",
                        "_RTCRtpReceiver__active_ssrc", "_RTCRtpReceiver__remote_streams",
                        "_RTCRtpReceiver__nack_generator")
                + _uses(RTCRtpReceiver, "receive", "_RTCRtpReceiver__codecs", "_RTCRtpReceiver__rtx_ssrc")
                + _uses(RTCRtpReceiver, "_handle_rtp_packet", "_RTCRtpReceiver__active_ssrc",
                        "_RTCRtpReceiver__remote_streams", "StreamStatistics", "_send_rtcp_nack", "missing")
                + _uses(RTCRtpReceiver, "_run_rtcp", "_RTCRtpReceiver__remote_streams"))
    if not inspect.iscoroutinefunction(RTCRtpReceiver.__dict__.get("_send_rtcp_nack")):
        problems.append("aiortc.RTCRtpReceiver._send_rtcp_nack is missing or not a coroutine function")
    return problems


_SENDER_STATE = ("_RTCRtpSender__ntp_timestamp", "_RTCRtpSender__rtp_timestamp",
                 "_RTCRtpSender__octet_count", "_RTCRtpSender__packet_count")


def _check_packets_out() -> list[str]:
    """:class:`OutboundStream` learns the payload type and mid from the sender's
    ``send()``, writes packets to ``__rtp_history`` (which ``_retransmit`` answers
    NACKs from) serialized with ``__rtp_header_extensions_map``, sends them with the
    transport's ``_send_rtp`` and keeps the counters the sender reports use. The
    sender's own loop must wait on the track before making an encoder."""
    from aiortc.rtcdtlstransport import RTCDtlsTransport
    from aiortc.rtcpeerconnection import RTCPeerConnection

    problems = (_uses(RTCPeerConnection, "_RTCPeerConnection__connect", "send")
                + _parameters(RTCRtpSender.__dict__.get("send"), "aiortc.RTCRtpSender.send", ("self", "parameters"))
                + _uses(RTCRtpSender, "__init__", "_RTCRtpSender__rtp_history",
                        "_RTCRtpSender__rtp_header_extensions_map", "_ssrc", *_SENDER_STATE)
                + _uses(RTCRtpSender, "_retransmit", "_RTCRtpSender__rtp_history")
                + _uses(RTCRtpSender, "_run_rtcp", *_SENDER_STATE)
                + _uses(RTCRtpSender, "_next_encoded_frame", "recv"))
    if not inspect.iscoroutinefunction(RTCDtlsTransport.__dict__.get("_send_rtp")):
        problems.append("aiortc.RTCDtlsTransport._send_rtp is missing or not a coroutine function")
    return problems


def _check_bandwidth() -> list[str]:
    """:class:`InboundStream` turns the receiver's own estimate off (its
    ``__remote_bitrate_estimator``) and sends the watchers' REMB with ``_send_rtcp``
    from ``__rtcp_ssrc``; :class:`OutboundStream` reads a watcher's REMB in the
    sender's ``_handle_rtcp_packet``, which the transport calls."""
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    problems = (_uses(RTCRtpReceiver, "__init__", "_RTCRtpReceiver__remote_bitrate_estimator",
                      "_RTCRtpReceiver__rtcp_ssrc")
                + _uses(RTCRtpReceiver, "_handle_rtp_packet", "_RTCRtpReceiver__remote_bitrate_estimator", "add")
                + _uses(RTCDtlsTransport, "_handle_rtcp_data", "_handle_rtcp_packet")
                + _parameters(RTCRtpSender.__dict__.get("_handle_rtcp_packet"),
                              "aiortc.RTCRtpSender._handle_rtcp_packet", ("self", "packet")))
    if not inspect.iscoroutinefunction(RTCRtpReceiver.__dict__.get("_send_rtcp")):
        problems.append("aiortc.RTCRtpReceiver._send_rtcp is missing or not a coroutine function")
    return problems


def _check_direct_path() -> list[str]:
    """:class:`DirectReceive` replaces the ICE connection's ``data_received`` (which
    aioice's protocol calls for each datagram that is not STUN, and which queues it
    in ``_queue`` for the DTLS transport's task), routes by the
    router's ``ssrc_table``, decrypts with ``_rx_srtp`` and keeps the transport's
    receive counters; :func:`send_rtp` protects with ``_tx_srtp``, sends on the
    nominated pair's protocol's ``transport`` and keeps the send counters."""
    from aioice.ice import Connection, StunProtocol
    from aiortc.rtcdtlstransport import RtpRouter
    from aiortc.rtcicetransport import RTCIceTransport

    problems = (_parameters(Connection.__dict__.get("data_received"), "aioice.Connection.data_received",
                            ("self", "data", "component"))
                + _uses(StunProtocol, "datagram_received", "receiver", "data_received")
                + _uses(Connection, "data_received", "_queue", "put_nowait")
                + _uses(Connection, "recvfrom", "_queue", "get")
                + _uses(Connection, "sendto", "_nominated", "protocol", "send_data", "remote_addr")
                + _uses(StunProtocol, "send_data", "transport", "sendto")
                + _uses(RTCIceTransport, "__init__", "_connection")
                + _uses(RtpRouter, "__init__", "ssrc_table")
                + _uses(RtpRouter, "route_rtp", "ssrc_table")
                + _uses(RTCDtlsTransport, "__init__", "_state", "_rx_srtp", "_tx_srtp", "_rtp_router",
                        "_rtp_header_extensions_map")
                + _uses(RTCDtlsTransport, "_recv_next", "_rx_srtp", "unprotect",
                        "_RTCDtlsTransport__rx_bytes", "_RTCDtlsTransport__rx_packets")
                + _uses(RTCDtlsTransport, "_send_rtp", "_tx_srtp", "protect",
                        "_RTCDtlsTransport__tx_bytes", "_RTCDtlsTransport__tx_packets"))
    if not hasattr(DtlsState, "CONNECTED"):
        problems.append("aiortc.rtcdtlstransport.State has no CONNECTED")
    return problems


#: Every hook into aiortc's private API, with the check of what it relies on.
HOOKS: dict[str, Callable[[], list[str]]] = {
    "decoder worker": _check_decoder_worker,
    "decoder queue": _check_decoder_queue,
    "jitter buffer": _check_jitter_buffer,
    "keyframe request upstream": _check_keyframe_upstream,
    "keyframe request from a watcher": _check_keyframe_request,
    "packets in": _check_packets_in,
    "packets out": _check_packets_out,
    "bandwidth": _check_bandwidth,
    "packets straight from the socket": _check_direct_path,
}


def check_compatible() -> None:
    """Raise :class:`IncompatibleAiortc` naming every hook the installed aiortc breaks.

    Run at start (``evr.app``): a renamed private name is found before a call, not
    during one. Names and shapes only: the behaviour is what tests/test_passthrough.py
    covers, against the pinned aiortc."""
    problems = [f"{hook}: {problem}" for hook, check in HOOKS.items() for problem in check()]
    if problems:
        raise IncompatibleAiortc(problems)
