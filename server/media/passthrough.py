"""Passthrough hooks into aiortc: encoded frames in, encoded frames out, no codec runs.

aiortc decodes every received frame in a per-receiver thread and encodes every
frame it sends. These hooks (private API of aiortc 1.16.0, pinned in
pyproject.toml and exercised by tests/test_passthrough.py) change that:

- a receiver's decoder queue is replaced by an :class:`EncodedFrameSink`, which is
  handed each complete encoded frame from the jitter buffer on the event loop and
  passes it on as an :class:`EncodedFrame`; the decoder thread exits at once;
- an :class:`RelayTrack` given to an ``RTCRtpSender`` yields ``EncodedFrame``
  objects, which the sender packetizes with the codec's ``pack()``;
- the sender's keyframe request (a PLI/FIR from the far end) is routed to a
  callback instead of a flag only an encoder reads.

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
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Optional

import aiortc
from aiortc import RTCRtpReceiver, RTCRtpSender, rtcrtpreceiver, rtcrtpsender
from aiortc.codecs import opus, vpx
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..tasks import TaskSet

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


def vp8_is_keyframe(data: bytes) -> bool:
    """The P bit of a VP8 frame tag is 0 for a keyframe (RFC 6386, 9.1)."""
    return bool(data) and not data[0] & 0x01


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


class RelayTrack(MediaStreamTrack):
    """An outgoing track fed with encoded frames from another participant.

    - Nothing is queued until the sender first asks for a frame (its connection is
      up), so a new consumer never gets a burst of stale frames; video then starts
      at a keyframe, requested upstream until one comes.
    - The queue is bounded: when the sender falls behind, the oldest frames are
      dropped (counted) and video waits for the next keyframe.
    - Timestamps are rewritten so the outgoing stream stays monotonic when its
      source rejoins or changes: the jump is replaced by the wall-clock gap.
    """

    def __init__(
        self,
        kind: str,
        request_keyframe: Callable[[], None],
        on_sent: Callable[[EncodedFrame], None],
        max_queue: int = 64,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.request_keyframe = request_keyframe
        self._on_sent = on_sent
        self._frames: deque[EncodedFrame] = deque()
        self._max_queue = max_queue
        self._waiter: Optional[asyncio.Future[None]] = None
        self._need_keyframe = kind == "video"
        self._started = False
        self._clock = CLOCK_RATE[kind]
        self._epoch: object = None
        self._delta = 0
        self._last_pts: Optional[int] = None
        self._last_arrival = 0.0
        self.dropped = 0

    def push(self, frame: EncodedFrame, epoch: object) -> None:
        """Queue a frame from the source connection ``epoch`` (any hashable identity)."""
        if not self._started or self.readyState != "live":
            return
        if self._need_keyframe:
            if not frame.is_keyframe:
                self.request_keyframe()
                return
            self._need_keyframe = False
        if epoch is not self._epoch:
            self._epoch = epoch
            if self._last_pts is None:
                self._delta = -frame.pts
            else:
                gap = max(1, round((frame.arrival - self._last_arrival) * self._clock))
                self._delta = self._last_pts + gap - frame.pts
        pts = frame.pts + self._delta
        self._last_pts = pts
        self._last_arrival = frame.arrival
        if len(self._frames) >= self._max_queue:
            self.dropped += len(self._frames)
            self._frames.clear()
            if self.kind == "video":
                self._need_keyframe = True
                self.request_keyframe()
                return
        self._frames.append(EncodedFrame(frame.data, pts, frame.time_base, frame.is_keyframe, frame.arrival))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def restart(self) -> None:
        """The source changed: wait for a keyframe from the new one."""
        if self.kind == "video":
            self._need_keyframe = True
            self._frames.clear()
            self.request_keyframe()

    def start(self) -> None:
        """The consumer is pulling: accept frames from now on (video from a keyframe)."""
        if not self._started:
            self._started = True
            if self._need_keyframe:
                self.request_keyframe()

    async def recv(self) -> EncodedFrame:  # type: ignore[override]
        self.start()
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        frame = self._frames.popleft()
        self._on_sent(frame)
        return frame

    def stop(self) -> None:
        super().stop()
        self._frames.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


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
    """Audio gets a shorter ``__jitter_buffer`` (:func:`attach_sink`)."""
    problems = (_uses(RTCRtpReceiver, "__init__", "_RTCRtpReceiver__jitter_buffer")
                + _uses(RTCRtpReceiver, "_handle_rtp_packet", "_RTCRtpReceiver__jitter_buffer"))
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


def _check_sender_packet_branch() -> list[str]:
    """The sender packs what its track gives when it is not an ``av`` frame (the
    :class:`RelayTrack`'s :class:`EncodedFrame`) with the encoder's ``pack()``, which
    reads ``bytes()``, ``pts`` and ``time_base``."""
    problems = _uses(RTCRtpSender, "_next_encoded_frame", "recv", "Frame", "pack")
    frame_type = getattr(rtcrtpsender, "Frame", None)
    if isinstance(frame_type, type) and issubclass(EncodedFrame, frame_type):
        problems.append("aiortc.rtcrtpsender.Frame would take an EncodedFrame for a frame to encode")
    for encoder in (vpx.Vp8Encoder, opus.OpusEncoder):
        problems += _uses(encoder, "pack", "bytes", "pts", "time_base")
    return problems


#: Every hook into aiortc's private API, with the check of what it relies on.
HOOKS: dict[str, Callable[[], list[str]]] = {
    "decoder worker": _check_decoder_worker,
    "decoder queue": _check_decoder_queue,
    "audio jitter buffer": _check_jitter_buffer,
    "keyframe request upstream": _check_keyframe_upstream,
    "keyframe request from a watcher": _check_keyframe_request,
    "sender packet branch": _check_sender_packet_branch,
}


def check_compatible() -> None:
    """Raise :class:`IncompatibleAiortc` naming every hook the installed aiortc breaks.

    Run at start (``evr.app``): a renamed private name is found before a call, not
    during one. Names and shapes only: the behaviour is what tests/test_passthrough.py
    covers, against the pinned aiortc."""
    problems = [f"{hook}: {problem}" for hook, check in HOOKS.items() for problem in check()]
    if problems:
        raise IncompatibleAiortc(problems)
