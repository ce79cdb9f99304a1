"""The aiortc hooks (private API of the pinned aiortc) and the relay track's rules."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import aiortc
import av
import pytest
from aiortc import RTCPeerConnection

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
        for _ in range(100):
            if len(got) >= 10:
                break
            await asyncio.sleep(0.05)
        assert len(got) >= 10
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
