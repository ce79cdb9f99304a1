"""The media bridge: one room per consultation, one peer connection per participant.

Every participant sees and hears every other (up to :data:`MAX_PARTICIPANTS`: the
victim, guests, officers, a sergeant). Each RTP packet of a participant's audio,
video and shared screen goes, as it arrives, to an outgoing stream of every other
participant's connection (an :class:`Output`, whose :class:`OutboundStream` rewrites
it for that stream: see :mod:`evr.media.passthrough`); keyframe requests from a
watcher travel upstream to the source, rate-limited, and so does the lowest of the
watchers' bandwidth estimates (:meth:`Room._bandwidth`). Nothing waits for a whole
frame on the live path.

Outputs and renegotiation
-------------------------

A connection's first two transceivers are the ones its client offered (one audio,
one video, ``sendrecv``): they carry the participant's *primary* source (staff: the
victim; the victim: the first member of staff; see :meth:`Room._preference`), so a
plain 1:1 call needs nothing but the client's offer and the server's answer, as
before. Everyone else in the call, and any shared screen, goes on transceivers the
server adds (``sendonly``) and offers to the client (server-initiated renegotiation:
``{"type": "offer"}``, answered ``{"type": "answer"}``). When a source leaves its
outputs go idle (``inactive``, offered again) and are reused for the next one, as
browsers recycle m-lines: a connection never grows past what the call needs. Who
is on which mid is in each client's ``state`` (:meth:`Room.view`). Media already
flowing is never touched by a renegotiation: a participant joining or leaving does
not interrupt the others.

A client shares a screen with a further video transceiver marked ``a=content:slides``
(in its first offer, or in a later offer on the same connection: the same ICE
credentials mean a renegotiation, new ones a rejoin). The server is the impolite
peer: a client offer that collides with one of the server's is refused (``glare``);
the client rolls back, answers, and offers again.

Frame sinks: the seam for whatever else consumes a participant's media
-----------------------------------------------------------------------

The bridge relays media and knows nothing of what else is done with it. Anything
that consumes a participant's incoming media (the recording today) attaches through
a :class:`FrameSink`, as aiortc's ``MediaRecorder`` and ``MediaRelay`` consume a
track: the room is built with :class:`SinkFactory` callables by its owner (the hub,
given them by the app), and asks each for a sink when a participant's first frame of
a track (``camera``: microphone and camera; ``screen``: a shared screen) is forwarded
(a participant who never sends media has none). From then on the room feeds the sink:

- :meth:`FrameSink.on_frame` with every frame it forwards (still encoded; not while
  the room is paused, nor frames of a replaced connection), with the connection it
  came on (a new one after a rejoin, so the sink can restart at a keyframe);
- :meth:`FrameSink.on_gap` when the participant's media stops for a known reason
  (``pause``, ``rejoin``, ``disconnected``), before the gap is seen;
- :meth:`FrameSink.on_close` once: when the room closes (with why: ``closed`` or
  ``server_shutdown``), after every connection is down; a screen's sinks also when
  the share ends (``screen_share_ended``): the next share is a recording of its own.

Frames are assembled for sinks only (:mod:`evr.media.frames`, after each packet
has been forwarded, and only while a sink is consuming: a call that is not
recorded assembles none; an incomplete frame is never given to a sink).
``on_frame`` and ``on_gap`` run on the event loop, on the receive path: they must
return at once (queue the work elsewhere, as the recorder
does to its writer thread). A sink asks for a keyframe with the participant's
:meth:`Participant.request_keyframe` (rate-limited like the watchers' requests).
:attr:`Room.capturing` (a sink consuming media now) is what the hub reports as
``recording``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine, Optional, Protocol, Sequence

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtp import RtpPacket
from aiortc.sdp import SessionDescription, candidate_from_sdp

from ..tasks import TaskSet
from .passthrough import EncodedFrame, InboundStream, OutboundStream, attach_sink, receive_directly, send_pli
from .sdp import Numbering, is_mdns_candidate, reachable_candidates, slides_sections

log = logging.getLogger(__name__)

KINDS = ("audio", "video")
#: What a participant may send: its microphone, its camera, a screen it shares.
FEEDS = ("audio", "video", "screen")
#: The RTP media kind of each feed.
FEED_KIND = {"audio": "audio", "video": "video", "screen": "video"}
#: The recorded tracks of a participant, and the feeds each holds.
TRACK_OF_FEED = {"audio": "camera", "video": "camera", "screen": "screen"}
#: The codec every leg is pinned to, per kind (RTX rides along with VP8).
PINNED = {"audio": ("audio/opus",), "video": ("video/vp8", "video/rtx")}
#: At most one keyframe request upstream per this many seconds.
PLI_INTERVAL = 0.3
#: Time allowed for tearing down one peer connection.
TEARDOWN_TIMEOUT = 1.5
#: Everyone in one call at once: the victim, guests, officers, a sergeant.
MAX_PARTICIPANTS = 6
SENDING = ("sendonly", "sendrecv")


class OfferError(ValueError):
    """An offer (or answer) the bridge cannot accept; ``code`` goes into the error message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class MediaCounters:
    audio_in_packets: int = 0
    video_in_frames: int = 0
    audio_out_packets: int = 0
    video_out_frames: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(eq=False)
class Output:
    """One outgoing transceiver of a leg and what it carries now: one feed of one
    other participant, or nothing (idle). The first two of a leg are the client's own
    (``primary``); the others were added by the server."""

    kind: str
    transceiver: RTCRtpTransceiver
    track: OutboundStream
    primary: bool
    source: Optional["Participant"] = None
    feed: Optional[str] = None
    #: The direction last offered to the client (None: never offered yet).
    offered: Optional[str] = None

    @property
    def mid(self) -> Optional[str]:
        return self.transceiver.mid


class Leg:
    """One peer connection of one participant (replaced on every rejoin)."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        #: What the client sends, by feed (``screen`` only while one is offered).
        self.receivers: dict[str, RTCRtpReceiver] = {}
        self.outputs: list[Output] = []
        self.counters = MediaCounters()
        #: One offer/answer exchange at a time on this connection.
        self.lock = asyncio.Lock()
        #: The client's ICE username fragment: the same in a later offer means a
        #: renegotiation of this connection, not a new one.
        self.remote_ufrag: Optional[str] = None
        #: Whether the client is sending a screen now.
        self.sharing = False
        #: Every receiver's packet hook (none is ever decoded): see :meth:`Room._guard`.
        self.guarded: dict[RTCRtpReceiver, InboundStream] = {}
        #: The payload types and extension ids the client's first offer chose: the
        #: server's own offers are rewritten to them (:mod:`evr.media.sdp`).
        self.numbering = Numbering()
        #: Whether the client gave a candidate the server can reach (not an mDNS
        #: name): until then its end-of-candidates is not passed on, so ICE waits
        #: for its checks (see :func:`evr.media.sdp.reachable_candidates`).
        self.reachable = False

    @property
    def connected(self) -> bool:
        return self.pc.connectionState not in ("failed", "closed")

    @property
    def tracks(self) -> dict[str, OutboundStream]:
        """The primary outputs' tracks by kind."""
        return {o.kind: o.track for o in self.outputs if o.primary}

    @property
    def senders(self) -> dict[str, RTCRtpSender]:
        return {o.kind: o.transceiver.sender for o in self.outputs if o.primary}

    def stop_tracks(self) -> None:
        """Stop the outgoing tracks (and so their subscriptions, at the next reroute)."""
        for output in self.outputs:
            output.track.stop()

    def needs_offer(self) -> bool:
        """Whether an added output was never offered, or its direction changed since
        (compared with what was offered, not with what the client answered: a client
        that declines an output is not offered it again and again)."""
        return any(not o.primary and o.transceiver.direction != o.offered for o in self.outputs)

    async def close(self) -> None:
        """Close the peer connection; never cancelled half way (that breaks aiortc)."""
        self.stop_tracks()
        task = _closing.spawn(self.pc.close(), "peer connection teardown")
        done, _ = await asyncio.wait({asyncio.shield(task)}, timeout=TEARDOWN_TIMEOUT)
        if not done:  # it runs on, owned by _closing, which logs how it ends
            log.warning("peer connection teardown is taking longer than %.1f s", TEARDOWN_TIMEOUT)


#: Teardowns in progress: never cancelled (that breaks aiortc), kept until they end,
#: a failure logged.
_closing = TaskSet("bridge")


class FrameSink(Protocol):
    """Consumes one participant's incoming media (see the module's docstring)."""

    #: True once the sink has stopped consuming (closed, or given up).
    finished: bool

    def on_frame(self, kind: str, frame: EncodedFrame, connection: object) -> None:
        """One encoded frame of ``kind`` (audio or video) from ``connection``; returns at once."""

    def on_gap(self, reason: str) -> None:
        """The media stops now for ``reason`` (pause, rejoin, disconnected)."""

    async def on_close(self, reason: str) -> None:
        """The room closed (or the screen share ended): no frame follows. Ends what the sink holds."""


#: Makes the sink for one of a participant's tracks: (consultation id, participant,
#: ``camera`` or ``screen``) -> a sink, or None to leave that media alone.
SinkFactory = Callable[[str, "Participant", str], Optional[FrameSink]]


@dataclass(eq=False)
class Participant:
    key: str
    role: str
    user_id: Optional[int] = None
    joined_seq: int = 0
    name: Optional[str] = None
    leg: Optional[Leg] = None
    counters: MediaCounters = field(default_factory=MediaCounters)
    #: Outgoing tracks (of other participants' legs) fed from this participant, by feed.
    watchers: dict[str, set[OutboundStream]] = field(default_factory=lambda: {f: set() for f in FEEDS})
    last_pli: dict[str, float] = field(default_factory=dict)
    user_agent: Optional[str] = None
    #: What consumes this participant's camera and microphone besides its watchers
    #: (from its first forwarded frame until the room closes).
    sinks: Optional[list[FrameSink]] = None
    #: What consumes the screen it shares (from the share's first frame to its end).
    screen_sinks: Optional[list[FrameSink]] = None
    #: Taken out of the call by staff (a guest's link ended): not shown any more.
    removed: bool = False

    @property
    def is_staff(self) -> bool:
        return self.key.startswith("staff:")

    @property
    def is_guest(self) -> bool:
        return self.key.startswith("guest:")

    @property
    def connected(self) -> bool:
        return self.leg is not None and self.leg.connected

    @property
    def sharing(self) -> bool:
        return self.leg is not None and self.leg.sharing

    def feeds(self) -> tuple[str, ...]:
        """What this participant sends others now."""
        return FEEDS if self.sharing else KINDS

    def request_keyframe(self, feed: str = "video") -> None:
        now = time.monotonic()
        if self.leg is None or now - self.last_pli.get(feed, 0.0) < PLI_INTERVAL:
            return
        receiver = self.leg.receivers.get(feed)
        if receiver is not None and send_pli(receiver):
            self.last_pli[feed] = now


StateListener = Callable[["Room"], Coroutine[Any, Any, None]]
#: Sends one signalling message to a participant's client.
Signal = Callable[["Participant", dict[str, Any]], Awaitable[None]]


async def _nobody(_p: Participant, _message: dict[str, Any]) -> None:
    """The default :data:`Signal` of a room with no sockets (tests of the seam)."""


class Roster:
    """Everyone who joined a room, by key, in the order they joined: the part of a
    room a room in a media worker (:class:`evr.media.pool.RemoteRoom`) mirrors."""

    #: What :meth:`participant` makes.
    member_type: type[Participant] = Participant

    def __init__(self) -> None:
        self.participants: dict[str, Participant] = {}
        self._seq = 0

    def participant(self, key: str, role: str, user_id: Optional[int] = None,
                    name: Optional[str] = None) -> Participant:
        p = self.participants.get(key)
        if p is None:
            self._seq += 1
            p = self.participants[key] = self.member_type(key, role, user_id, self._seq, name)
        elif name is not None:
            p.name = name
        return p

    def entries(self, watcher: Optional[Participant], carried: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
        """Who is in the call, as ``watcher``'s client is told it (``state``): each
        participant's id, role, name, whether connected, and (``carried``) the mids of
        the transceivers that carry them in the watcher's connection."""
        entries = []
        for p in sorted(self.participants.values(), key=lambda p: p.joined_seq):
            if p.removed:
                continue
            entry: dict[str, Any] = {"id": p.key, "role": p.role, "name": p.name, "connected": p.connected,
                                     "screen": p.sharing}
            if watcher is not None:
                entry["you"] = p is watcher
                if p is not watcher:
                    entry["mids"] = carried.get(p.key, {})
            entries.append(entry)
        return entries


class Room(Roster):
    """The live side of one consultation."""

    def __init__(self, consultation_id: str, ice_servers: list[RTCIceServer], on_change: StateListener,
                 sinks: Sequence[SinkFactory] = (), signal: Signal = _nobody) -> None:
        self.id = consultation_id
        #: Asked for a participant's sinks at the first forwarded frame of each track.
        self.sink_factories = tuple(sinks)
        super().__init__()
        self.ice_servers = ice_servers
        #: Whether the call is paused: no media is forwarded nor captured. (The
        #: consultation's status is :class:`evr.consultations.Consultations`'s.)
        self.paused = False
        self.closed = False
        self._on_change = on_change
        self._signal = signal
        #: State notifications this room started (cancelled at close: nobody is left to tell).
        self.tasks = TaskSet(f"room {consultation_id}")
        #: Screen recordings ending (a share stopped): awaited at close, never cancelled.
        self.endings = TaskSet(f"room {consultation_id}")

    # -- participants -------------------------------------------------------

    def _preference(self, watcher: Participant, source: Participant) -> tuple[int, int]:
        """Who a participant sees on its own transceivers, best first: staff the
        victim, then guests, then other staff; the victim and guests the first member
        of staff who joined, then the victim, then guests."""
        if watcher.is_staff:
            rank = 0 if source.role == "victim" else 1 if source.is_guest else 2
        else:
            rank = 0 if source.is_staff else 1 if source.role == "victim" else 2
        return rank, source.joined_seq

    def source_for(self, watcher: Participant) -> Optional[Participant]:
        """Whom a participant sees and hears on its own (primary) transceivers."""
        if watcher.leg is not None:
            for output in watcher.leg.outputs:
                if output.primary and output.source is not None:
                    return output.source
        return None

    def _sources(self, watcher: Participant) -> list[Participant]:
        return sorted((p for p in self.participants.values() if p is not watcher and p.leg is not None),
                      key=lambda p: self._preference(watcher, p))

    def _reroute(self) -> None:
        """Point every output of every leg at what its participant should receive now.

        The primary outputs keep their source while it is connected (sticky: a move
        costs the watcher a keyframe), else take the most preferred one. Every other
        source's feeds keep their output, or take an idle one of the same kind, or a
        new transceiver (offered to the client by :meth:`renegotiate`)."""
        for watcher in self.participants.values():
            if watcher.leg is not None:
                self._route(watcher, watcher.leg)
        for p in self.participants.values():
            for feed in FEEDS:
                p.watchers[feed] = {t for t in p.watchers[feed] if t.readyState == "live"}
                self._bandwidth(p, feed)

    def _route(self, watcher: Participant, leg: Leg) -> None:
        sources = self._sources(watcher)
        wanted = {(s, feed) for s in sources for feed in s.feeds()}
        primary = [o for o in leg.outputs if o.primary]
        current = primary[0].source if primary else None
        if current not in sources:
            current = sources[0] if sources else None
        for output in primary:
            self._assign(output, current, output.kind if current is not None else None)
        carried = {(o.source, o.feed) for o in primary if o.source is not None}
        for output in leg.outputs:
            if not output.primary and output.source is not None:
                if (output.source, output.feed) in wanted and (output.source, output.feed) not in carried:
                    carried.add((output.source, output.feed))
                else:
                    self._assign(output, None, None)
        for source in sources:
            for feed in source.feeds():
                if (source, feed) in carried:
                    continue
                output = next((o for o in leg.outputs if not o.primary and o.source is None
                               and o.kind == FEED_KIND[feed]), None) or self._add_output(watcher, leg, FEED_KIND[feed])
                self._assign(output, source, feed)
        for output in leg.outputs:
            if not output.primary:
                output.transceiver.direction = "sendonly" if output.source is not None else "inactive"

    def _assign(self, output: Output, source: Optional[Participant], feed: Optional[str]) -> None:
        if output.source is source and output.feed == feed:
            return
        if output.source is not None and output.feed is not None:
            output.source.watchers[output.feed].discard(output.track)
        output.source, output.feed = source, feed
        if source is not None and feed is not None:
            source.watchers[feed].add(output.track)
            output.track.restart()

    def _add_output(self, watcher: Participant, leg: Leg, kind: str, primary: bool = False,
                    transceiver: Optional[RTCRtpTransceiver] = None) -> Output:
        """A new outgoing track on ``leg`` (on a new ``sendonly`` transceiver unless given)."""
        if transceiver is None:
            transceiver = leg.pc.addTransceiver(kind, direction="sendonly")
        caps = RTCRtpSender.getCapabilities(kind)
        transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType.lower() in PINNED[kind]])
        track = OutboundStream(kind, lambda: self._keyframe_for(output), self._sent_counter(leg, kind),
                               lambda: self._bandwidth(output.source, output.feed))
        output = Output(kind, transceiver, track, primary)
        track.attach(transceiver.sender)
        leg.outputs.append(output)
        return output

    @staticmethod
    def _keyframe_for(output: Output) -> None:
        if output.source is not None and output.feed in ("video", "screen"):
            output.source.request_keyframe(output.feed)

    def view(self, watcher: Optional[Participant] = None) -> list[dict[str, Any]]:
        """Who is in the call, as ``watcher``'s client is told it (``state``): each
        participant's id, role, name, whether connected, and the mids of the
        transceivers that carry them in the watcher's connection."""
        carried: dict[str, dict[str, str]] = {}
        if watcher is not None and watcher.leg is not None:
            for output in watcher.leg.outputs:
                if output.source is not None and output.feed is not None and output.mid is not None:
                    carried.setdefault(output.source.key, {})[output.feed] = output.mid
        return self.entries(watcher, carried)

    def count(self) -> int:
        """Participants connected now."""
        return sum(1 for p in self.participants.values() if p.leg is not None)

    # -- media --------------------------------------------------------------

    def _relay(self, source: Participant, leg: Leg, feed: str, inbound: InboundStream,
               packet: RtpPacket, arrival: float) -> None:
        """The live path: one RTP packet of ``source``'s ``feed`` to everyone watching it."""
        if feed == "audio":
            leg.counters.audio_in_packets += 1
        elif feed == "video" and packet.marker:
            leg.counters.video_in_frames += 1
        if self.paused or source.leg is not leg or self.closed:
            return
        via = (leg, packet.ssrc)
        for track in tuple(source.watchers[feed]):  # the live call first, whatever a sink does
            track.forward(packet, via, arrival)
        track_name = TRACK_OF_FEED[feed]
        sinks = source.sinks if track_name == "camera" else source.screen_sinks
        if sinks is None:
            if track_name == "screen" and not leg.sharing:
                return
            sinks = self._make_sinks(source, track_name)
            if track_name == "camera":
                source.sinks = sinks
            else:
                source.screen_sinks = sinks
        wanted = any(not sink.finished for sink in sinks)
        if wanted != inbound.framing:
            inbound.frames(wanted)

    def _capture(self, source: Participant, leg: Leg, feed: str, frame: EncodedFrame) -> None:
        """Off the live path: a whole encoded frame (assembled after its packets were
        forwarded, only while a sink wants frames) to ``source``'s sinks."""
        if self.paused or source.leg is not leg or self.closed:
            return
        sinks = source.sinks if TRACK_OF_FEED[feed] == "camera" else source.screen_sinks
        if not sinks:
            return
        for sink in list(sinks):
            try:
                sink.on_frame(FEED_KIND[feed], frame, leg)
            except Exception:  # a sink must never end the call (this runs in the socket's callback)
                log.exception("room %s: a media sink of %s failed; it is detached", self.id, source.role)
                sinks.remove(sink)

    def _bandwidth(self, source: Optional[Participant], feed: Optional[str]) -> None:
        """Tell ``source``'s browser what its ``feed``'s watchers can take: the lowest
        of their REMB estimates (the sender then sends no more than the weakest
        downlink carries)."""
        if source is None or source.leg is None or feed not in ("video", "screen"):
            return
        receiver = source.leg.receivers.get(feed)
        inbound = source.leg.guarded.get(receiver) if receiver is not None else None
        if inbound is None:
            return
        rates = [rate for rate in (t.bitrate for t in source.watchers[feed]) if rate is not None]
        inbound.set_limit(min(rates) if rates else None)

    def _make_sinks(self, source: Participant, track: str) -> list[FrameSink]:
        """Each factory's sink for ``source``'s ``track`` (made once, at its first
        frame); a factory that fails is logged and left out, never retried on every frame."""
        sinks = []
        for factory in self.sink_factories:
            try:
                sink = factory(self.id, source, track)
            except Exception:
                log.exception("room %s: no media sink for %s (its factory failed)", self.id, source.role)
                continue
            if sink is not None:
                sinks.append(sink)
        if sinks:
            self._notify("media sink attached")  # tell everyone (the hub's "recording")
        return sinks

    async def connect(self, p: Participant, offer_sdp: str) -> str:
        """Accept an offer from ``p``: a renegotiation of its connection (the same ICE
        credentials) or a new connection replacing its previous leg; return the
        answer SDP. Then :meth:`renegotiate` offers the others (and ``p``) what changed."""
        if self.closed:
            raise OfferError("closed", "This consultation is closed.")
        sections = _check_offer(offer_sdp)
        if p.leg is not None and p.leg.remote_ufrag == sections[0].ufrag:
            return await self._renegotiated(p, p.leg, offer_sdp, sections)
        if p.leg is None and self.count() >= MAX_PARTICIPANTS:
            raise OfferError("room_full", f"This call already has {MAX_PARTICIPANTS} people in it.")
        _check_first_offer(sections)
        # Always a list: with None aiortc uses a public STUN server of a third party.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.ice_servers)))
        leg = Leg(pc)
        leg.remote_ufrag = sections[0].ufrag
        leg.numbering = Numbering.of(offer_sdp)
        try:
            for kind in KINDS:
                self._add_output(p, leg, kind, primary=True,
                                 transceiver=pc.addTransceiver(kind, direction="sendrecv"))
            try:
                usable = reachable_candidates(offer_sdp)
                leg.reachable = "a=candidate:" in usable
                await pc.setRemoteDescription(RTCSessionDescription(sdp=usable, type="offer"))
            except Exception as exc:  # aiortc raises several types for bad SDP
                raise OfferError("bad_sdp", f"The offer could not be used: {_short(exc)}") from exc
            transceivers = pc.getTransceivers()
            if len(transceivers) != len(sections):
                raise OfferError("bad_sdp", "The offer must carry one audio and one video transceiver.")
            for kind in KINDS:
                leg.receivers[kind] = next(o.transceiver.receiver for o in leg.outputs if o.kind == kind)
            if any(leg.receivers[kind].track is None for kind in KINDS):  # e.g. a=recvonly, a=inactive
                raise OfferError("bad_sdp", "The offer must send audio and video (sendrecv or sendonly).")
            if any(t.receiver.transport is None for t in transceivers):
                raise OfferError("bad_sdp", "The offer's sections could not be given a transport.")
            for kind in KINDS:
                self._attach(leg, leg.receivers[kind], kind, p, kind)
            self._take_screen(p, leg, sections)
            self._guard(leg)
            try:
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as exc:  # an offer aiortc took but cannot answer
                log.warning("consultation %s: no answer to an accepted offer: %s", self.id, _short(exc))
                raise OfferError("bad_sdp", "The offer could not be answered.") from exc
        except BaseException:
            await leg.close()
            raise
        if self.closed:  # closed while the answer was being made
            await leg.close()
            raise OfferError("closed", "This consultation is closed.")

        old, p.leg = p.leg, leg
        p.counters = leg.counters
        pc.on("connectionstatechange", lambda: self._leg_state_changed(p, leg))
        if old is not None:
            old.stop_tracks()
            self._note(p, "rejoin")
            if old.sharing and not leg.sharing:
                self._screen_ended(p)
        self._reroute()
        if old is not None:
            await old.close()
        await self._on_change(self)
        return pc.localDescription.sdp

    async def _renegotiated(self, p: Participant, leg: Leg, offer_sdp: str, sections: list["_Section"]) -> str:
        """The client offered again on its connection (a screen share starting or
        ending): answer it on the same connection; the media flowing goes on."""
        async with leg.lock:
            if leg.pc.signalingState != "stable" or leg.needs_offer():  # one is out, or about to be
                raise OfferError("glare", "The server has an offer out to you: answer it, then offer again.")
            known = [t.mid for t in leg.pc.getTransceivers() if t.mid is not None]
            if [s.mid for s in sections[:len(known)]] != known or len(sections) > len(known) + 1:
                raise OfferError("bad_sdp", "A renegotiation keeps every section in its place and adds at most "
                                            "a screen.")
            if len(sections) > len(known) and not (sections[-1].kind == "video" and sections[-1].slides):
                raise OfferError("bad_sdp", "The only section a client may add is a screen (a=content:slides).")
            try:
                await leg.pc.setRemoteDescription(RTCSessionDescription(sdp=reachable_candidates(offer_sdp),
                                                                        type="offer"))
            except Exception as exc:
                raise OfferError("bad_sdp", f"The offer could not be used: {_short(exc)}") from exc
            was_sharing = leg.sharing
            self._take_screen(p, leg, sections)
            self._guard(leg)
            try:
                await leg.pc.setLocalDescription(await leg.pc.createAnswer())
            except Exception as exc:
                log.warning("consultation %s: no answer to a renegotiation: %s", self.id, _short(exc))
                raise OfferError("bad_sdp", "The offer could not be answered.") from exc
            answer = leg.pc.localDescription.sdp
        if was_sharing != leg.sharing:
            log.info("consultation %s: %s %s sharing a screen", self.id, p.role,
                     "started" if leg.sharing else "stopped")
            if not leg.sharing:
                self._screen_ended(p)
            self._reroute()
            await self._on_change(self)
        return answer

    def _take_screen(self, p: Participant, leg: Leg, sections: list["_Section"]) -> None:
        """Find the screen the client offers (a ``slides`` video section it sends on)."""
        screens = [s for s in sections if s.slides and s.kind == "video" and s.direction in SENDING]
        if len(screens) > 1:
            raise OfferError("bad_sdp", "At most one screen is shared at a time.")
        transceiver = next((t for t in leg.pc.getTransceivers() if screens and t.mid == screens[0].mid), None)
        if transceiver is None or transceiver.receiver.track is None:
            leg.sharing = False
            return
        receiver = transceiver.receiver
        if leg.receivers.get("screen") is not receiver:
            leg.receivers["screen"] = receiver
            self._attach(leg, receiver, "video", p, "screen")
        leg.sharing = True

    def _screen_ended(self, p: Participant) -> None:
        sinks, p.screen_sinks = p.screen_sinks, None
        for sink in sinks or ():
            self.endings.spawn(sink.on_close("screen_share_ended"), f"{p.role}'s screen recording ends")

    def _attach(self, leg: Leg, receiver: RTCRtpReceiver, kind: str, p: Optional[Participant] = None,
                feed: Optional[str] = None) -> None:
        """Hook ``receiver``: its packets go to :meth:`_relay` and its frames (when a
        sink wants them) to :meth:`_capture` as ``p``'s ``feed``; without ``p``, both
        are dropped."""
        if receiver in leg.guarded:
            return
        attach_sink(receiver, kind, _drop)  # no decoder thread; frames come from the InboundStream
        if p is None or feed is None:
            leg.guarded[receiver] = InboundStream(receiver, kind, _ignore)
            return
        inbound = InboundStream(receiver, kind,
                                lambda packet, arrival: self._relay(p, leg, feed, inbound, packet, arrival),
                                lambda frame: self._capture(p, leg, feed, frame))
        leg.guarded[receiver] = inbound

    def _guard(self, leg: Leg) -> None:
        """Every receiver that would start gets a sink that drops its frames: an
        answer that sends where the server offered ``sendonly`` (or a section the
        bridge does not use) must never start one of aiortc's decoder threads. The
        connection's packets are then handled as the socket delivers them
        (:class:`~evr.media.passthrough.DirectReceive`)."""
        for transceiver in leg.pc.getTransceivers():
            receiver = transceiver.receiver
            if receiver.track is not None and receiver not in leg.guarded:
                self._attach(leg, receiver, transceiver.kind)
            if receiver.transport is not None:
                receive_directly(receiver.transport, leg.guarded)

    async def renegotiate(self) -> None:
        """Offer every connection whose outputs changed what it now carries (a new
        transceiver, or one gone idle or back in use); each waits for its answer
        before another offer (:meth:`answer`)."""
        for p in list(self.participants.values()):
            if p.leg is not None and p.leg.needs_offer():
                await self._offer(p, p.leg)

    async def _offer(self, p: Participant, leg: Leg) -> None:
        async with leg.lock:
            if p.leg is not leg or self.closed or leg.pc.signalingState != "stable" or not leg.needs_offer():
                return  # an offer is out (its answer offers again), or nothing changed
            try:
                await leg.pc.setLocalDescription(await leg.pc.createOffer())
            except Exception:  # noqa: BLE001 - the call goes on as it was
                log.exception("consultation %s: no offer could be made to %s", self.id, p.role)
                return
            for output in leg.outputs:
                output.offered = output.transceiver.direction
            sdp = leg.numbering.apply(leg.pc.localDescription.sdp)
        await self._signal(p, {"type": "offer", "sdp": sdp})
        await self._on_change(self)  # the mids of the new transceivers, in everyone's state

    async def answer(self, p: Participant, sdp: str) -> None:
        """The client's answer to the server's offer."""
        leg = p.leg
        if leg is None:
            raise OfferError("no_offer", "There is no offer to answer: send an offer first.")
        if not isinstance(sdp, str) or not sdp.strip():
            raise OfferError("bad_sdp", "The answer has no SDP.")
        async with leg.lock:
            if leg.pc.signalingState != "have-local-offer":
                raise OfferError("no_offer", "There is no offer from the server to answer.")
            try:
                description = SessionDescription.parse(sdp)
            except Exception as exc:  # noqa: BLE001 - the parser raises many types
                raise OfferError("bad_sdp", f"The answer's SDP could not be parsed: {_short(exc)}") from exc
            offered = [t.mid for t in leg.pc.getTransceivers() if t.mid is not None]
            if [m.rtp.muxId for m in description.media] != offered:
                raise OfferError("bad_sdp", "The answer must answer every section of the offer, in order.")
            try:
                await leg.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
            except Exception as exc:
                raise OfferError("bad_sdp", f"The answer could not be used: {_short(exc)}") from exc
            self._guard(leg)
        await self._offer(p, leg)  # what changed meanwhile

    async def add_candidate(self, p: Participant, candidate: Optional[dict[str, Any]]) -> None:
        leg = p.leg  # this connection's, even if a rejoin replaces it meanwhile
        if leg is None:
            raise OfferError("no_offer", "Send an offer before candidates.")
        if candidate is None:
            await self._end_of_candidates(leg)
            return
        text = candidate.get("candidate")
        if not isinstance(text, str):
            raise OfferError("bad_candidate", "candidate.candidate must be a string.")
        mid, index = candidate.get("sdpMid"), candidate.get("sdpMLineIndex")
        if mid is not None and (not isinstance(mid, str) or len(mid) > 64):
            raise OfferError("bad_candidate", "candidate.sdpMid must be a short string or null.")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1024):
            raise OfferError("bad_candidate", "candidate.sdpMLineIndex must be a small whole number or null.")
        if not text:  # an empty candidate also means end of candidates
            await self._end_of_candidates(leg)
            return
        if is_mdns_candidate(text):  # only the browser's own network can resolve it
            return
        try:
            # aiortc's parser asserts on a short line, so AssertionError is bad input too.
            parsed = candidate_from_sdp(text.removeprefix("candidate:"))
            parsed.sdpMid = mid
            parsed.sdpMLineIndex = index
            await leg.pc.addIceCandidate(parsed)
        except (ValueError, IndexError, AssertionError, TypeError) as exc:
            raise OfferError("bad_candidate", "The candidate could not be used.") from exc
        leg.reachable = True

    @staticmethod
    async def _end_of_candidates(leg: Leg) -> None:
        """Pass the client's end-of-candidates on, unless none of its candidates could
        be used: aioice would then give up before the client's checks arrive."""
        if leg.reachable:
            await leg.pc.addIceCandidate(None)

    async def disconnect(self, p: Participant) -> None:
        """The participant left (or its socket dropped): drop its leg, keep its counters."""
        leg, p.leg = p.leg, None
        if leg is None:
            return
        leg.stop_tracks()
        self._note(p, "disconnected")
        if leg.sharing:
            self._screen_ended(p)
        self._reroute()
        await leg.close()
        if not self.closed:
            await self._on_change(self)
            await self.renegotiate()

    def _leg_state_changed(self, p: Participant, leg: Leg) -> None:
        if p.leg is leg and not self.closed:
            log.info("consultation %s: %s connection %s", self.id, p.role, leg.pc.connectionState)
            self._notify(f"{p.role} connection {leg.pc.connectionState}")

    def _notify(self, why: str) -> None:
        """Work out and send the room's state from a callback that cannot wait for it."""
        self.tasks.spawn(self._on_change(self), f"state change: {why}")

    @staticmethod
    def _sent_counter(leg: Leg, kind: str) -> Callable[[int], None]:
        def count(marker: int) -> None:
            if kind == "audio":
                leg.counters.audio_out_packets += 1
            elif marker:  # the last packet of a frame
                leg.counters.video_out_frames += 1

        return count

    # -- pause and close ----------------------------------------------------

    def set_paused(self, paused: bool) -> None:
        if self.paused == paused:
            return
        self.paused = paused
        if paused:
            for p in self.participants.values():
                self._note(p, "pause")
        if not paused:  # everyone needs a fresh picture after a break
            for p in self.participants.values():
                for output in (p.leg.outputs if p.leg else ()):
                    if output.source is not None:
                        output.track.restart()

    async def close(self, reason: str = "closed") -> None:
        """Tear down every peer connection of this room, then close its sinks."""
        self.closed = True
        legs = [p.leg for p in self.participants.values() if p.leg is not None]
        for p in self.participants.values():
            p.leg = None
            for feed in FEEDS:
                p.watchers[feed].clear()
        await asyncio.gather(*(leg.close() for leg in legs))
        sinks = [sink for p in self.participants.values() for sink in (*(p.sinks or ()), *(p.screen_sinks or ()))]
        await asyncio.gather(*(sink.on_close(reason) for sink in sinks if not sink.finished))
        await self.endings.wait()
        await self.tasks.close()  # state notifications: nobody is left to tell

    @property
    def capturing(self) -> bool:
        """Whether a sink is consuming media now (the hub's ``recording`` flag of ``state``)."""
        return not self.paused and not self.closed and any(
            not sink.finished for p in self.participants.values() for sink in p.sinks or ()
        )

    @staticmethod
    def _note(p: Participant, reason: str) -> None:
        """Tell ``p``'s sinks why its media stops now."""
        for sink in (*(p.sinks or ()), *(p.screen_sinks or ())):
            sink.on_gap(reason)

    def snapshot(self) -> list[dict[str, Any]]:
        """Everyone who joined, for the consultation's JSON (with media counters)."""
        return [
            {"id": p.key, "role": p.role, "name": p.name, "connected": p.connected, "screen": p.sharing,
             "media": p.counters.as_dict()}
            for p in sorted(self.participants.values(), key=lambda p: p.joined_seq)
        ]


def _drop(_frame: EncodedFrame) -> None:
    """Frames nobody asked for (see :meth:`Room._guard`)."""


def _ignore(_packet: RtpPacket, _arrival: float) -> None:
    """Packets nobody asked for (see :meth:`Room._guard`)."""


@dataclass(frozen=True)
class _Section:
    """What the bridge reads of one m-section of an offer."""

    kind: str
    mid: str
    direction: str
    ufrag: Optional[str]
    slides: bool


def _check_offer(sdp: str) -> list[_Section]:
    """Parse an offer and check what every offer needs (ICE, DTLS, a mid each)."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError("bad_sdp", "The offer has no SDP.")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # noqa: BLE001 - the parser raises many types
        raise OfferError("bad_sdp", f"The offer's SDP could not be parsed: {_short(exc)}") from exc
    if not description.media or len(description.media) > 3 + 3 * (MAX_PARTICIPANTS - 1):
        raise OfferError("bad_sdp", "The offer must carry one audio and one video transceiver.")
    for media in description.media:
        if media.kind not in KINDS:
            raise OfferError("bad_sdp", "The offer may carry audio and video only.")
        if not media.ice or not media.ice.usernameFragment or not media.dtls or not media.dtls.fingerprints:
            raise OfferError("bad_sdp", f"The {media.kind} section lacks ICE or DTLS parameters.")
    # aiortc fails half way through (no transport) on sections without a mid, or a
    # BUNDLE group naming a section that is not there: refuse those before it tries.
    mids = [m.rtp.muxId for m in description.media]
    if not all(mids) or len(set(mids)) != len(mids):
        raise OfferError("bad_sdp", "Every section of the offer needs its own a=mid.")
    for group in description.group:
        if group.semantic == "BUNDLE" and not set(group.items) <= set(mids):
            raise OfferError("bad_sdp", "The offer's BUNDLE group names a section it does not have.")
    slides = slides_sections(sdp)
    return [_Section(m.kind, m.rtp.muxId, m.direction or "sendrecv", m.ice.usernameFragment if m.ice else "",
                     i in slides) for i, m in enumerate(description.media)]


def _check_first_offer(sections: list[_Section]) -> None:
    """A new connection offers one audio and one camera video section, in any order,
    and at most one screen (a ``slides`` video section after the camera's)."""
    camera = [s.kind for s in sections if not s.slides]
    screens = [i for i, s in enumerate(sections) if s.slides]
    if sorted(camera) != ["audio", "video"] or len(screens) > 1:
        raise OfferError("bad_sdp", "The offer must carry exactly one audio and one video transceiver "
                                    "(and at most one screen, marked a=content:slides).")
    video = next(i for i, s in enumerate(sections) if s.kind == "video" and not s.slides)
    if screens and (sections[screens[0]].kind != "video" or screens[0] < video):
        raise OfferError("bad_sdp", "A screen is a video section after the camera's.")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
