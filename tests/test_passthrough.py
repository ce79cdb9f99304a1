"""The aiortc hooks (private API of the pinned aiortc) and the relay track's rules."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import aiortc
import av
import pytest
from aiortc import RTCPeerConnection
from conftest import eventually

from evr.media import passthrough
from evr.media.passthrough import EncodedFrame, RelayTrack, vp8_is_keyframe
from evr.media.sources import EncodedSourceTrack, vp8_clip

TB = Fraction(1, 90000)


def frame(pts: int, key: bool = False, arrival: float = 0.0) -> EncodedFrame:
    return EncodedFrame(b"\x00" if key else b"\x01", pts, TB, key, arrival)


def test_pinned_versions_are_the_ones_the_hooks_were_written_for():
    assert aiortc.__version__ == "1.16.0"
    assert av.__version__ == "18.1.0"
    assert hasattr(aiortc.rtcrtpreceiver, "decoder_worker")
    receiver_attrs = aiortc.RTCRtpReceiver.__init__.__code__.co_names
    assert {"_RTCRtpReceiver__decoder_queue", "_RTCRtpReceiver__jitter_buffer"} <= set(receiver_attrs)


def test_vp8_keyframe_bit():
    clip = vp8_clip(160, 120, seconds=1)
    assert vp8_is_keyframe(clip.frames[0][0])
    assert [vp8_is_keyframe(d) for d, _ in clip.frames] == [k for _, k in clip.frames]
    assert not vp8_is_keyframe(b"")


def relay(kind: str = "video", asked: list | None = None, **kwargs) -> RelayTrack:
    """A relay track whose consumer has started pulling."""
    track = RelayTrack(kind, lambda: asked.append(1) if asked is not None else None, lambda f: None, **kwargs)
    track.start()
    return track


async def test_nothing_is_queued_before_the_consumer_starts_then_a_keyframe_is_asked_for():
    asked = []
    track = RelayTrack("video", lambda: asked.append(1), lambda f: None)
    track.push(frame(0, key=True), epoch=1)
    assert not track._frames and not asked
    track.start()
    assert asked == [1]
    track.push(frame(3000, key=True), epoch=1)
    assert (await track.recv()).pts == 0


async def test_video_waits_for_a_keyframe_and_asks_for_one():
    asked = []
    track = relay("video", asked)
    asked.clear()
    track.push(frame(0), epoch=1)
    assert asked and not track._frames
    track.push(frame(3000, key=True), epoch=1)
    track.push(frame(6000), epoch=1)
    assert [f.is_keyframe for f in [await track.recv(), await track.recv()]] == [True, False]


async def test_timestamps_stay_monotonic_across_a_source_change():
    track = relay("video")
    track.push(frame(500_000, key=True, arrival=10.0), epoch="first")
    track.push(frame(503_000, arrival=10.033), epoch="first")
    # The source rejoins: its timestamps restart near zero two seconds later.
    track.push(frame(100, key=True, arrival=12.033), epoch="second")
    out = [(await track.recv()).pts for _ in range(3)]
    assert out[0] == 0 and out[1] == 3000
    assert out[2] == pytest.approx(3000 + 2 * 90000, abs=2)


async def test_a_full_queue_drops_and_waits_for_the_next_keyframe():
    asked = []
    track = relay("video", asked, max_queue=4)
    track.push(frame(0, key=True), epoch=1)
    asked.clear()
    for i in range(1, 10):
        track.push(frame(i * 3000), epoch=1)
    assert track.dropped >= 4 and asked
    track.push(frame(40_000, key=True), epoch=1)
    assert (await track.recv()).is_keyframe


async def test_recv_ends_when_the_track_stops():
    track = RelayTrack("audio", lambda: None, lambda f: None)
    waiter = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    track.stop()
    with pytest.raises(aiortc.mediastreams.MediaStreamError):
        await waiter


async def test_a_sink_receiver_gets_encoded_frames_and_starts_no_decoder_thread():
    """Two aiortc peers over loopback: the receiving side gets the sender's exact bytes."""
    import threading

    sender_pc, receiver_pc = RTCPeerConnection(), RTCPeerConnection()
    clip = vp8_clip(160, 120, seconds=1)
    source = EncodedSourceTrack(clip)
    sender_pc.addTransceiver(source, direction="sendonly")
    got: list[EncodedFrame] = []

    @receiver_pc.on("track")
    def on_track(track):
        receiver = receiver_pc.getTransceivers()[0].receiver
        passthrough.attach_sink(receiver, "video", got.append)

    await sender_pc.setLocalDescription(await sender_pc.createOffer())
    await receiver_pc.setRemoteDescription(sender_pc.localDescription)
    await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
    await sender_pc.setRemoteDescription(receiver_pc.localDescription)
    try:
        await eventually(lambda: len(got), lambda n: n >= 10, timeout=5.0, what="ten frames at the sink")
        assert not [t for t in threading.enumerate() if t.name == "video-decoder"]
        sent = {d for d, _ in clip.frames}
        assert all(f.data in sent for f in got)
        assert got[0].is_keyframe
        steps = {b.pts - a.pts for a, b in zip(got, got[1:])}
        assert steps == {3000}
    finally:
        await sender_pc.close()
        await receiver_pc.close()


async def test_keyframe_requests_name_the_media_stream_not_its_retransmissions():
    """Chrome ignores a PLI for its RTX SSRC; the receiver hears both, RTX last."""
    import datetime

    from aiortc import RTCPeerConnection

    from evr.media.passthrough import media_ssrc

    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video").receiver
        assert hasattr(receiver, "_RTCRtpReceiver__rtx_ssrc")  # the private map this relies on
        assert media_ssrc(receiver) is None
        now = datetime.datetime.now(datetime.timezone.utc)
        receiver._RTCRtpReceiver__rtx_ssrc = {2222: 1111}
        receiver._RTCRtpReceiver__active_ssrc = {1111: now, 2222: now + datetime.timedelta(seconds=1)}
        assert media_ssrc(receiver) == 1111
    finally:
        await pc.close()


# -- the start-up check of every hook --------------------------------------------

from aiortc import RTCRtpReceiver, RTCRtpSender, rtcrtpreceiver  # noqa: E402
from aiortc.codecs import opus, vpx  # noqa: E402
from aiortc.rtcrtpreceiver import RemoteStreamTrack  # noqa: E402

from evr.media.passthrough import HOOKS, IncompatibleAiortc, check_compatible, media_ssrc  # noqa: E402


async def _receive_without_decoder_thread(self, parameters):  # aiortc renamed what it starts
    pass


def _handle_rtp_elsewhere(self, packet, arrival_time_ms):  # frames no longer go to __decoder_queue
    return None


# Receiver __init__s of an aiortc that renamed one of the three private attributes.
def _init_without_decoder_queue(self, kind, transport):
    self._RTCRtpReceiver__jitter_buffer = None
    self._RTCRtpReceiver__rtx_ssrc = {}


def _init_without_jitter_buffer(self, kind, transport):
    self._RTCRtpReceiver__decoder_queue = None
    self._RTCRtpReceiver__rtx_ssrc = {}


def _init_without_rtx_map(self, kind, transport):
    self._RTCRtpReceiver__decoder_queue = None
    self._RTCRtpReceiver__jitter_buffer = None


class _NarrowJitterBuffer:
    def __init__(self, capacity):
        self.capacity = capacity


def _pli_sync(self, media_ssrc):
    pass


def _rtcp_without_keyframe(self, packet):
    pass


async def _next_frame_always_encoding(self, codec):
    data = await self.track.recv()
    return self.encoder.encode(data)


def _pack_other(self, packet):
    return [], 0


#: How aiortc could break each hook: (hook, what changed, how to make that change).
BREAKAGES = [
    ("decoder worker", "decoder_worker renamed",
     lambda mp: mp.delattr(rtcrtpreceiver, "decoder_worker")),
    ("decoder worker", "decoder_worker takes other parameters",
     lambda mp: mp.setattr(rtcrtpreceiver, "decoder_worker", lambda loop, input_q, output_q: None)),
    ("decoder worker", "receive() no longer starts decoder_worker",
     lambda mp: mp.setattr(RTCRtpReceiver, "receive", _receive_without_decoder_thread)),
    ("decoder queue", "frames no longer put into __decoder_queue",
     lambda mp: mp.setattr(RTCRtpReceiver, "_handle_rtp_packet", _handle_rtp_elsewhere)),
    ("decoder queue", "the receiver no longer sets __decoder_queue",
     lambda mp: mp.setattr(RTCRtpReceiver, "__init__", _init_without_decoder_queue)),
    ("decoder queue", "the remote track has no _queue",
     lambda mp: mp.setattr(RemoteStreamTrack, "__init__", lambda self, kind, id=None: None)),
    ("decoder queue", "the decoder is stopped another way",
     lambda mp: mp.delattr(RTCRtpReceiver, "_RTCRtpReceiver__stop_decoder")),
    ("audio jitter buffer", "JitterBuffer has no prefetch",
     lambda mp: mp.setattr(passthrough, "JitterBuffer", _NarrowJitterBuffer)),
    ("audio jitter buffer", "the receiver no longer sets __jitter_buffer",
     lambda mp: mp.setattr(RTCRtpReceiver, "__init__", _init_without_jitter_buffer)),
    ("audio jitter buffer", "the receiver reassembles frames elsewhere",
     lambda mp: mp.setattr(RTCRtpReceiver, "_handle_rtp_packet", _handle_rtp_elsewhere)),
    ("keyframe request upstream", "_send_rtcp_pli renamed",
     lambda mp: mp.delattr(RTCRtpReceiver, "_send_rtcp_pli")),
    ("keyframe request upstream", "_send_rtcp_pli no longer a coroutine",
     lambda mp: mp.setattr(RTCRtpReceiver, "_send_rtcp_pli", _pli_sync)),
    ("keyframe request upstream", "the RTX map is no longer __rtx_ssrc",
     lambda mp: mp.setattr(RTCRtpReceiver, "__init__", _init_without_rtx_map)),
    ("keyframe request upstream", "the synchronization sources are gone",
     lambda mp: mp.delattr(RTCRtpReceiver, "getSynchronizationSources")),
    ("keyframe request from a watcher", "_send_keyframe renamed",
     lambda mp: mp.delattr(RTCRtpSender, "_send_keyframe")),
    ("keyframe request from a watcher", "a PLI no longer calls _send_keyframe",
     lambda mp: mp.setattr(RTCRtpSender, "_handle_rtcp_packet", _rtcp_without_keyframe)),
    ("sender packet branch", "the sender encodes whatever its track gives",
     lambda mp: mp.setattr(RTCRtpSender, "_next_encoded_frame", _next_frame_always_encoding)),
    ("sender packet branch", "the VP8 encoder has no pack()",
     lambda mp: mp.delattr(vpx.Vp8Encoder, "pack")),
    ("sender packet branch", "Opus pack() reads something else",
     lambda mp: mp.setattr(opus.OpusEncoder, "pack", _pack_other)),
]


def test_the_pinned_aiortc_passes_the_start_up_check_before_and_after_install():
    assert all(check() == [] for check in HOOKS.values())
    check_compatible()
    passthrough.install()
    check_compatible()  # checks aiortc's own decoder worker, not the one installed


def test_every_hook_has_its_breakages_tested():
    assert {hook for hook, _, _ in BREAKAGES} == set(HOOKS)


@pytest.mark.parametrize("hook,change,breaker", BREAKAGES, ids=[f"{h}: {c}" for h, c, _ in BREAKAGES])
def test_check_compatible_refuses_an_aiortc_that_breaks_a_hook(monkeypatch, hook, change, breaker):
    breaker(monkeypatch)
    assert HOOKS[hook](), f"the {hook} check missed: {change}"
    with pytest.raises(IncompatibleAiortc) as refused:
        check_compatible()
    assert f"{hook}: " in str(refused.value)
    assert aiortc.__version__ in str(refused.value)


async def test_the_rtx_lookup_does_not_fall_back_silently():
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video").receiver
        del receiver._RTCRtpReceiver__rtx_ssrc
        with pytest.raises(AttributeError):
            media_ssrc(receiver)
    finally:
        await pc.close()


async def test_the_app_refuses_to_start_with_an_incompatible_aiortc(monkeypatch, settings, clock):
    from aiohttp.test_utils import TestServer

    from evr.app import create_app

    monkeypatch.delattr(RTCRtpSender, "_send_keyframe")
    server = TestServer(create_app(settings, clock=clock))
    try:
        with pytest.raises(IncompatibleAiortc, match="_send_keyframe"):
            await server.start_server()
    finally:
        await server.close()
