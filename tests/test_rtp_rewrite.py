"""The relay's RTP rules on their own: where a VP8 keyframe starts, and how one
outgoing stream stays continuous across rejoins and source switches."""

from __future__ import annotations

from fractions import Fraction

import pytest
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, wrap_rtx
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from evr.media.passthrough import EncodedFrame, SentPacket
from evr.media.rtp import (
    ABS_SEND_TIME,
    AUDIO_LEVEL,
    MID,
    SEQ_MOD,
    TS_MOD,
    PacketWriter,
    Rewriter,
    vp8_keyframe_start,
)
from evr.media.sources import vp8_clip


def packets_of(data: bytes, picture_id: bool = True) -> list[bytes]:
    """The RTP payloads aiortc's VP8 packetizer makes of one encoded frame."""
    encoder = Vp8Encoder()
    payloads, _ = encoder.pack(EncodedFrame(data, 0, Fraction(1, 90000), True, 0.0))  # type: ignore[arg-type]
    return payloads


def test_only_the_first_packet_of_a_keyframe_starts_one():
    clip = vp8_clip(640, 480, seconds=1)
    for data, keyframe in clip.frames:
        payloads = packets_of(data)
        assert len(payloads) >= 1
        assert vp8_keyframe_start(payloads[0]) is keyframe
        assert not any(vp8_keyframe_start(p) for p in payloads[1:])


@pytest.mark.parametrize("payload,expected", [
    (b"", False),
    (b"\x10", False),  # S set, nothing after the descriptor
    (b"\x10\x00", True),  # S, PID 0, no extension; P bit clear
    (b"\x10\x01", False),  # an inter frame
    (b"\x11\x00", False),  # partition 1 is never a start
    (b"\x00\x00", False),  # not the start of a partition
    (b"\x90", False),  # X set but the extension byte is missing
    (b"\x90\x80", False),  # I set but the picture id is missing
    (b"\x90\x80\x81\x02\x00", True),  # two-byte picture id
    (b"\x90\x80\x05\x00", True),  # one-byte picture id
    (b"\x90\xf0\x81\x02\x07\x20\x00", True),  # picture id, TL0PICIDX, TID/KEYIDX
    (b"\x90\xf0\x81\x02\x07\x20", False),  # ... and no VP8 header
])
def test_keyframe_start_reads_every_descriptor_shape(payload, expected):
    assert vp8_keyframe_start(payload) is expected


@given(st.binary(max_size=32))
@hypothesis_settings(max_examples=500, deadline=None)
def test_keyframe_start_never_raises(payload):
    assert vp8_keyframe_start(payload) in (True, False)


def test_one_source_is_a_constant_offset_and_late_packets_keep_their_place():
    r = Rewriter(90000, first_sequence_number=1000, first_timestamp=5000)
    r.switch("a", 40000, 123456, 1.0)
    out = [r.map(s, t, 1.0) for s, t in [(40000, 123456), (40002, 126456), (40001, 123456), (40003, 126456)]]
    assert [m.sequence_number for m in out] == [1000, 1002, 1001, 1003]
    assert [m.timestamp for m in out] == [5000, 8000, 5000, 8000]


def test_a_switch_continues_the_numbers_by_the_time_that_passed():
    r = Rewriter(90000, first_sequence_number=10, first_timestamp=0)
    r.switch("first", 500, 900_000, 10.0)
    r.map(500, 900_000, 10.0)
    last = r.map(501, 903_000, 10.033)
    # The source rejoins two seconds later with new random numbers.
    r.switch("second", 7, 42, 12.033)
    first_of_second = r.map(7, 42, 12.033)
    assert first_of_second.sequence_number == last.sequence_number + 1
    assert first_of_second.timestamp == pytest.approx(last.timestamp + 2 * 90000, abs=2)
    assert r.switches == 2


def test_numbers_wrap_around():
    r = Rewriter(48000, first_sequence_number=SEQ_MOD - 1, first_timestamp=TS_MOD - 960)
    r.switch("a", 0, 0, 0.0)
    assert (r.map(0, 0, 0.0).sequence_number, r.map(1, 960, 0.02).sequence_number) == (SEQ_MOD - 1, 0)
    assert r.map(2, 1920, 0.04).timestamp == 960


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 50), st.integers(0, SEQ_MOD - 1),
                          st.integers(0, TS_MOD - 1)), min_size=1, max_size=20))
@hypothesis_settings(max_examples=200, deadline=None)
def test_every_switch_continues_the_sequence_by_exactly_one(runs):
    """Whatever sources come and go, with whatever numbers, the outgoing sequence
    numbers run on without a gap or a repeat, and timestamps never go back."""
    r = Rewriter(90000, first_sequence_number=0, first_timestamp=0)
    now, seqs, stamps = 0.0, [], []
    for run, (source, count, seq, ts) in enumerate(runs):
        r.switch((source, run), seq, ts, now)  # each run is a new stream of a source (a rejoin)
        for i in range(count):
            now += 0.01
            mapped = r.map((seq + i) % SEQ_MOD, (ts + 900 * i) % TS_MOD, now)
            seqs.append(mapped.sequence_number)
            stamps.append(mapped.timestamp)
    assert seqs == [i % SEQ_MOD for i in range(len(seqs))]
    assert all(0 <= (b - a) % TS_MOD < TS_MOD // 2 for a, b in zip(stamps, stamps[1:]))


# -- the outgoing packet's bytes ----------------------------------------------------

EXTENSION_URIS = (MID, ABS_SEND_TIME, AUDIO_LEVEL)


def aiortc_map(ids: dict[str, int]) -> HeaderExtensionsMap:
    extensions_map = HeaderExtensionsMap()
    extensions_map.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=i, uri=uri) for uri, i in ids.items()]))
    return extensions_map


@given(
    ids=st.lists(st.integers(1, 14), min_size=3, max_size=3, unique=True),
    present=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    mid=st.one_of(st.none(), st.text(alphabet="0123456789abcdefghij", min_size=1, max_size=16)),
    marker=st.booleans(),
    payload_type=st.integers(0, 127),
    ssrc=st.integers(0, TS_MOD - 1),
    sequence_number=st.integers(0, SEQ_MOD - 1),
    timestamp=st.integers(0, TS_MOD - 1),
    payload=st.binary(max_size=64),
    abs_send_time=st.one_of(st.none(), st.integers(0, 0xFFFFFF)),
    audio_level=st.one_of(st.none(), st.tuples(st.booleans(), st.integers(0, 127))),
)
@hypothesis_settings(max_examples=300, deadline=None)
def test_the_packet_writer_makes_the_bytes_aiortc_makes(ids, present, mid, marker, payload_type, ssrc,
                                                         sequence_number, timestamp, payload, abs_send_time,
                                                         audio_level):
    """Byte for byte what ``RtpPacket.serialize`` makes, whichever extensions were
    negotiated and whichever values a packet carries, and aiortc parses it back."""
    negotiated = {uri: i for uri, i, on in zip(EXTENSION_URIS, ids, present, strict=True) if on}
    writer = PacketWriter(payload_type, ssrc, mid, negotiated)
    assert writer.usable
    data = writer.write(marker, sequence_number, timestamp, payload, abs_send_time, audio_level)
    packet = RtpPacket(payload_type=payload_type, marker=int(marker), sequence_number=sequence_number,
                       timestamp=timestamp, ssrc=ssrc, payload=payload)
    packet.extensions.mid = mid
    packet.extensions.abs_send_time = abs_send_time
    packet.extensions.audio_level = audio_level
    extensions_map = aiortc_map(negotiated)
    assert data == packet.serialize(extensions_map)
    back = RtpPacket.parse(data, extensions_map)
    assert (back.sequence_number, back.timestamp, back.payload, bool(back.marker)) == (
        sequence_number, timestamp, payload, marker)


@pytest.mark.parametrize("ids,mid", [
    ({MID: 15}, "0"),  # an id only the two-byte form can carry
    ({MID: 1}, ""),  # an empty element: two-byte form too
    ({MID: 1}, "x" * 17),  # longer than a one-byte element holds
])
def test_the_packet_writer_leaves_the_two_byte_form_to_aiortc(ids, mid):
    assert not PacketWriter(96, 1, mid, ids).usable


def test_a_sent_packet_is_parsed_only_when_a_nack_asks_for_it():
    """The send history keeps bytes; aiortc's RTX wrapper reads fields, which are then
    parsed with the sender's extension map."""
    negotiated = {MID: 1, ABS_SEND_TIME: 2}
    writer = PacketWriter(96, 7, "1", negotiated)
    data = writer.write(True, 100, 9000, b"\x10\x00payload", 0x123456, None)
    sent = SentPacket(data, 100, aiortc_map(negotiated))
    assert sent.serialize() is data and sent._parsed is None
    rtx = wrap_rtx(sent, payload_type=97, sequence_number=5, ssrc=8)
    assert rtx.payload == b"\x00\x64\x10\x00payload" and rtx.timestamp == 9000 and rtx.marker
    assert rtx.extensions.mid == "1" and rtx.extensions.abs_send_time == 0x123456
