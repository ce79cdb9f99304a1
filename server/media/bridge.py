"""The media bridge: one room per consultation, one peer connection per participant.

Each participant's received audio and video go, still encoded, to the outgoing
tracks of the participants that watch them (see :meth:`Room.source_for`). Keyframe
requests from a watcher travel upstream to its source, rate-limited.

Frame sinks: the seam for whatever else consumes a participant's media
-----------------------------------------------------------------------

The bridge relays media and knows nothing of what else is done with it. Anything
that consumes a participant's incoming media (the recording today; guests and a
faster media engine next) attaches through a :class:`FrameSink`, as aiortc's
``MediaRecorder`` and ``MediaRelay`` consume a track: the room is built with
:class:`SinkFactory` callables by its owner (the hub, given them by the app), and
asks each for a sink when a participant's first frame is forwarded (a participant
who never sends media has none). From then on the room feeds the sink:

- :meth:`FrameSink.on_frame` with every frame it forwards (still encoded; not while
  the room is paused, nor frames of a replaced connection), with the connection it
  came on (a new one after a rejoin, so the sink can restart at a keyframe);
- :meth:`FrameSink.on_gap` when the participant's media stops for a known reason
  (``pause``, ``rejoin``, ``disconnected``), before the gap is seen;
- :meth:`FrameSink.on_close` once, when the room closes (with why: ``closed`` or
  ``server_shutdown``), after every connection is down.

``on_frame`` and ``on_gap`` run on the event loop, on the receive path of the live
call: they must return at once (queue the work elsewhere, as the recorder does to
its writer thread). A sink asks for a keyframe with the participant's
:meth:`Participant.request_keyframe` (rate-limited like the watchers' requests).
:attr:`Room.capturing` (a sink consuming media now) is what the hub reports as
``recording``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Optional, Protocol, Sequence

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription, candidate_from_sdp

from ..tasks import TaskSet
from .passthrough import EncodedFrame, RelayTrack, attach_sink, on_keyframe_request, send_pli

log = logging.getLogger(__name__)

KINDS = ("audio", "video")
#: The codec every leg is pinned to, per kind (RTX rides along with VP8).
PINNED = {"audio": ("audio/opus",), "video": ("video/vp8", "video/rtx")}
#: At most one keyframe request upstream per this many seconds.
PLI_INTERVAL = 0.3
#: Time allowed for tearing down one peer connection.
TEARDOWN_TIMEOUT = 1.5


class OfferError(ValueError):
    """An offer the bridge cannot accept; ``code`` goes into the error message."""

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


class Leg:
    """One peer connection of one participant (replaced on every rejoin)."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        self.receivers: dict[str, RTCRtpReceiver] = {}
        self.senders: dict[str, RTCRtpSender] = {}
        self.tracks: dict[str, RelayTrack] = {}
        self.counters = MediaCounters()

    @property
    def connected(self) -> bool:
        return self.pc.connectionState not in ("failed", "closed")

    def stop_tracks(self) -> None:
        """Stop the outgoing tracks (and so their subscriptions, at the next reroute)."""
        for track in self.tracks.values():
            track.stop()

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
        """The room closed: no frame follows. Ends what the sink holds."""


#: Makes the sink for one participant's media: (consultation id, participant) ->
#: a sink, or None to leave this participant's media alone.
SinkFactory = Callable[[str, "Participant"], Optional[FrameSink]]


@dataclass
class Participant:
    key: str
    role: str
    user_id: Optional[int] = None
    joined_seq: int = 0
    leg: Optional[Leg] = None
    counters: MediaCounters = field(default_factory=MediaCounters)
    #: Outgoing tracks (of other participants' legs) fed from this participant.
    watchers: dict[str, set[RelayTrack]] = field(default_factory=lambda: {k: set() for k in KINDS})
    last_pli: float = 0.0
    user_agent: Optional[str] = None
    #: What consumes this participant's media besides its watchers (from its first
    #: forwarded frame until the room closes).
    sinks: Optional[list[FrameSink]] = None

    @property
    def is_staff(self) -> bool:
        return self.role != "victim"

    @property
    def connected(self) -> bool:
        return self.leg is not None and self.leg.connected

    def request_keyframe(self) -> None:
        now = time.monotonic()
        if self.leg is None or now - self.last_pli < PLI_INTERVAL:
            return
        receiver = self.leg.receivers.get("video")
        if receiver is not None and send_pli(receiver):
            self.last_pli = now


StateListener = Callable[["Room"], Coroutine[Any, Any, None]]


class Room:
    """The live side of one consultation."""

    def __init__(self, consultation_id: str, ice_servers: list[RTCIceServer], on_change: StateListener,
                 sinks: Sequence[SinkFactory] = ()) -> None:
        self.id = consultation_id
        #: Asked for a participant's sinks at its first forwarded frame.
        self.sink_factories = tuple(sinks)
        self.ice_servers = ice_servers
        self.participants: dict[str, Participant] = {}
        #: Whether the call is paused: no media is forwarded nor captured. (The
        #: consultation's status is :class:`evr.consultations.Consultations`'s.)
        self.paused = False
        self.closed = False
        self._on_change = on_change
        self._seq = 0
        #: State notifications this room started (see :meth:`_notify`).
        self.tasks = TaskSet(f"room {consultation_id}")

    # -- participants -------------------------------------------------------

    def participant(self, key: str, role: str, user_id: Optional[int] = None) -> Participant:
        p = self.participants.get(key)
        if p is None:
            self._seq += 1
            p = self.participants[key] = Participant(key, role, user_id, self._seq)
        return p

    def source_for(self, watcher: Participant) -> Optional[Participant]:
        """Whom a participant sees and hears: staff watch the victim; the victim
        watches the first member of staff who joined and is still connected."""
        if watcher.is_staff:
            victim = self.participants.get("victim")
            return victim if victim is not None and victim is not watcher else None
        staff = [p for p in self.participants.values() if p.is_staff and p.leg is not None]
        return min(staff, key=lambda p: p.joined_seq) if staff else None

    def _reroute(self) -> None:
        """Point every outgoing track at its participant's current source."""
        for p in self.participants.values():
            for watched in self.participants.values():
                for kind in KINDS:
                    track = p.leg.tracks.get(kind) if p.leg else None
                    if track is None:
                        continue
                    subscribed = track in watched.watchers[kind]
                    wanted = self.source_for(p) is watched
                    if subscribed and not wanted:
                        watched.watchers[kind].discard(track)
                    elif wanted and not subscribed:
                        watched.watchers[kind].add(track)
                        track.restart()
        for p in self.participants.values():
            for kind in KINDS:
                p.watchers[kind] = {t for t in p.watchers[kind] if t.readyState == "live"}

    # -- media --------------------------------------------------------------

    def _forward(self, source: Participant, leg: Leg, kind: str, frame: EncodedFrame) -> None:
        if kind == "audio":
            leg.counters.audio_in_packets += 1
        else:
            leg.counters.video_in_frames += 1
        if self.paused or source.leg is not leg or self.closed:
            return
        for track in source.watchers[kind]:  # the live call first, whatever a sink does
            track.push(frame, leg)
        if source.sinks is None:
            source.sinks = self._make_sinks(source)
        for sink in list(source.sinks):
            try:
                sink.on_frame(kind, frame, leg)
            except Exception:  # a sink must never end the call (this runs in aiortc's receive path)
                log.exception("room %s: a media sink of %s failed; it is detached", self.id, source.role)
                source.sinks.remove(sink)

    def _make_sinks(self, source: Participant) -> list[FrameSink]:
        """Each factory's sink for ``source`` (made once, at its first frame); a
        factory that fails is logged and left out, never retried on every frame."""
        sinks = []
        for factory in self.sink_factories:
            try:
                sink = factory(self.id, source)
            except Exception:
                log.exception("room %s: no media sink for %s (its factory failed)", self.id, source.role)
                continue
            if sink is not None:
                sinks.append(sink)
        if sinks:
            self._notify("media sink attached")  # tell everyone (the hub's "recording")
        return sinks

    async def connect(self, p: Participant, offer_sdp: str) -> str:
        """Accept an offer from ``p``; replace its previous leg; return the answer SDP."""
        if self.closed:
            raise OfferError("closed", "This consultation is closed.")
        _check_offer(offer_sdp)
        # Always a list: with None aiortc uses a public STUN server of a third party.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.ice_servers)))
        leg = Leg(pc)
        try:
            for kind in KINDS:
                transceiver = pc.addTransceiver(kind, direction="sendrecv")
                caps = RTCRtpSender.getCapabilities(kind)
                transceiver.setCodecPreferences([c for c in caps.codecs if c.mimeType.lower() in PINNED[kind]])
                track = RelayTrack(
                    kind,
                    request_keyframe=self._keyframe_requester(p, kind),
                    on_sent=self._sent_counter(leg, kind),
                )
                transceiver.sender.replaceTrack(track)
                on_keyframe_request(transceiver.sender, track.request_keyframe)
                leg.tracks[kind] = track
                leg.senders[kind] = transceiver.sender
                leg.receivers[kind] = transceiver.receiver
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except Exception as exc:  # aiortc raises several types for bad SDP
                raise OfferError("bad_sdp", f"The offer could not be used: {_short(exc)}") from exc
            if len(pc.getTransceivers()) != 2:
                raise OfferError("bad_sdp", "The offer must carry one audio and one video transceiver.")
            if any(leg.receivers[kind].track is None for kind in KINDS):  # e.g. a=recvonly, a=inactive
                raise OfferError("bad_sdp", "The offer must send audio and video (sendrecv or sendonly).")
            if any(t.receiver.transport is None for t in pc.getTransceivers()):
                raise OfferError("bad_sdp", "The offer's sections could not be given a transport.")
            for kind in KINDS:
                attach_sink(leg.receivers[kind], kind, self._frame_handler(p, leg, kind))
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
        self._reroute()
        if old is not None:
            await old.close()
        await self._on_change(self)
        return pc.localDescription.sdp

    async def add_candidate(self, p: Participant, candidate: Optional[dict[str, Any]]) -> None:
        if p.leg is None:
            raise OfferError("no_offer", "Send an offer before candidates.")
        if candidate is None:
            await p.leg.pc.addIceCandidate(None)
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
            await p.leg.pc.addIceCandidate(None)
            return
        try:
            # aiortc's parser asserts on a short line, so AssertionError is bad input too.
            parsed = candidate_from_sdp(text.removeprefix("candidate:"))
            parsed.sdpMid = mid
            parsed.sdpMLineIndex = index
            await p.leg.pc.addIceCandidate(parsed)
        except (ValueError, IndexError, AssertionError, TypeError) as exc:
            raise OfferError("bad_candidate", "The candidate could not be used.") from exc

    async def disconnect(self, p: Participant) -> None:
        """The participant left (or its socket dropped): drop its leg, keep its counters."""
        leg, p.leg = p.leg, None
        if leg is None:
            return
        leg.stop_tracks()
        self._note(p, "disconnected")
        self._reroute()
        await leg.close()
        if not self.closed:
            await self._on_change(self)

    def _leg_state_changed(self, p: Participant, leg: Leg) -> None:
        if p.leg is leg and not self.closed:
            log.info("consultation %s: %s connection %s", self.id, p.role, leg.pc.connectionState)
            self._notify(f"{p.role} connection {leg.pc.connectionState}")

    def _notify(self, why: str) -> None:
        """Work out and send the room's state from a callback that cannot wait for it."""
        self.tasks.spawn(self._on_change(self), f"state change: {why}")

    def _frame_handler(self, p: Participant, leg: Leg, kind: str) -> Callable[[EncodedFrame], None]:
        return lambda frame: self._forward(p, leg, kind, frame)

    def _keyframe_requester(self, watcher: Participant, kind: str) -> Callable[[], None]:
        def request() -> None:
            if kind == "video":
                source = self.source_for(watcher)
                if source is not None:
                    source.request_keyframe()

        return request

    @staticmethod
    def _sent_counter(leg: Leg, kind: str) -> Callable[[EncodedFrame], None]:
        def count(_frame: EncodedFrame) -> None:
            if kind == "audio":
                leg.counters.audio_out_packets += 1
            else:
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
                for track in (p.leg.tracks.values() if p.leg else ()):
                    track.restart()

    async def close(self, reason: str = "closed") -> None:
        """Tear down every peer connection of this room, then close its sinks."""
        self.closed = True
        legs = [p.leg for p in self.participants.values() if p.leg is not None]
        for p in self.participants.values():
            p.leg = None
            for kind in KINDS:
                p.watchers[kind].clear()
        await asyncio.gather(*(leg.close() for leg in legs))
        sinks = [sink for p in self.participants.values() for sink in p.sinks or ()]
        await asyncio.gather(*(sink.on_close(reason) for sink in sinks))
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
        for sink in p.sinks or ():
            sink.on_gap(reason)

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"role": p.role, "connected": p.connected, "media": p.counters.as_dict()}
            for p in sorted(self.participants.values(), key=lambda p: p.joined_seq)
        ]


def _check_offer(sdp: str) -> None:
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError("bad_sdp", "The offer has no SDP.")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # noqa: BLE001 - the parser raises many types
        raise OfferError("bad_sdp", f"The offer's SDP could not be parsed: {_short(exc)}") from exc
    kinds = sorted(m.kind for m in description.media)
    if kinds != ["audio", "video"]:
        raise OfferError("bad_sdp", "The offer must carry exactly one audio and one video transceiver.")
    for media in description.media:
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


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
