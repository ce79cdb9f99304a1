"""What the relay reads and rewrites in RTP packets: pure functions, no aiortc state.

The live path forwards each RTP packet as it arrives (see :mod:`evr.media.passthrough`).
Each outgoing stream has its own SSRC, and its receiver must see one continuous
stream whatever happens upstream: the source rejoins on a new connection (new SSRC,
random sequence numbers and timestamps), the watcher is switched to another source,
or the call pauses. A :class:`Rewriter` maps every source packet's sequence number
and timestamp into the outgoing stream's space, as Janus's "switching context" and
mediasoup's ``RtpStreamSend`` do: inside one source the mapping is a constant offset
(so reordered and retransmitted packets land where they belong), and at a switch the
new offset continues the sequence numbers by one and the timestamps by the
wall-clock time that passed. Video switches only at the start of a keyframe
(:func:`vp8_keyframe_start`), the one place a decoder can start.

Everything here works on plain ints and bytes, so it is tested and fuzzed without
a peer connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Hashable, Optional

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


def vp8_descriptor_size(payload: bytes) -> int:
    """The length of a VP8 RTP payload descriptor (RFC 7741, 4.2), or -1 when the
    payload is too short to hold the descriptor its bits announce."""
    size = len(payload)
    if size < 1:
        return -1
    pos = 1
    if payload[0] & 0x80:  # X: extension byte follows
        if size <= pos:
            return -1
        ext = payload[pos]
        pos += 1
        if ext & 0x80:  # I: picture id, one or two bytes (M bit)
            if size <= pos:
                return -1
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            pos += 1
    return pos if pos <= size else -1


def vp8_is_keyframe(data: bytes) -> bool:
    """Whether a whole VP8 frame is a keyframe: the P bit of its frame tag is 0
    (RFC 6386, 9.1)."""
    return bool(data) and not data[0] & 0x01


def vp8_partition_start(payload: bytes) -> bool:
    """The S bit with partition index 0: the packet starts a frame."""
    return bool(payload) and payload[0] & 0x1F == 0x10


def vp8_keyframe_start(payload: bytes) -> bool:
    """Whether a VP8 RTP payload (RFC 7741) is the first packet of a keyframe.

    The payload descriptor's S bit must be set with partition index 0, and the VP8
    payload header after the descriptor must have its P bit clear (RFC 6386, 9.1).
    A truncated or malformed descriptor is not a keyframe start.
    """
    if not vp8_partition_start(payload):
        return False
    pos = vp8_descriptor_size(payload)
    return 0 < pos < len(payload) and not payload[pos] & 0x01


@dataclass(slots=True)
class Mapped:
    """One source packet's place in the outgoing stream."""

    sequence_number: int
    timestamp: int


class Rewriter:
    """Maps the packets of whichever source feeds one outgoing stream into that
    stream's sequence number and timestamp space.

    ``source`` is any identity of the upstream stream (the bridge passes the
    source's connection and SSRC): a new identity is a switch. ``clock_rate`` turns
    the wall-clock gap at a switch into timestamp units.
    """

    def __init__(self, clock_rate: int, first_sequence_number: int = 0, first_timestamp: int = 0) -> None:
        self.clock_rate = clock_rate
        self._source: Optional[Hashable] = None
        self._seq_offset = 0
        self._ts_offset = 0
        #: The highest sequence number and the timestamp sent so far, and when.
        self._last_seq = (first_sequence_number - 1) % SEQ_MOD
        self._last_ts = first_timestamp % TS_MOD
        self._last_arrival: Optional[float] = None
        self.switches = 0

    @property
    def source(self) -> Optional[Hashable]:
        return self._source

    def switch(self, source: Hashable, sequence_number: int, timestamp: int, arrival: float) -> None:
        """Continue the outgoing stream with ``source``, whose next packet has these numbers."""
        if self._last_arrival is None:
            gap = 0
        else:
            gap = max(1, round((arrival - self._last_arrival) * self.clock_rate))
        self._source = source
        self._seq_offset = (self._last_seq + 1 - sequence_number) % SEQ_MOD
        self._ts_offset = (self._last_ts + gap - timestamp) % TS_MOD
        self.switches += 1

    def map(self, sequence_number: int, timestamp: int, arrival: float) -> Mapped:
        """The outgoing numbers of a packet of the current source (call :meth:`switch` first)."""
        seq = (sequence_number + self._seq_offset) % SEQ_MOD
        ts = (timestamp + self._ts_offset) % TS_MOD
        if (seq - self._last_seq) % SEQ_MOD < SEQ_MOD // 2:  # newer (not a late or repeated packet)
            self._last_seq = seq
            self._last_ts = ts
            self._last_arrival = arrival
        return Mapped(seq, ts)


#: The header extensions the relay writes (RFC 8285), by URI as negotiated in SDP.
MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
_HEADER = struct.Struct("!BBHLL")
_HEADER_WITH_EXTENSIONS = struct.Struct("!BBHLLHH")
_ONE_BYTE_PROFILE = 0xBEDE


class PacketWriter:
    """Serializes one outgoing stream's RTP packets straight to bytes.

    Every packet of a stream has the same payload type, SSRC and mid, so the
    fixed part of its header and its mid element are worked out once; what changes
    per packet (marker, sequence number, timestamp, the source's ``abs-send-time``
    and audio level) is packed into them. The bytes are exactly what aiortc's
    ``RtpPacket.serialize`` makes of the same packet (one-byte extension elements,
    RFC 8285 4.2, in aiortc's order: mid, abs-send-time, audio level), as the tests
    check: only faster, with no packet object per forwarded packet.

    ``usable`` is False when the negotiated ids or the mid need the two-byte form
    (an id above 14, a mid empty or over 16 bytes): the caller then serializes
    the aiortc way.
    """

    def __init__(self, payload_type: int, ssrc: int, mid: Optional[str], extension_ids: dict[str, int]) -> None:
        self.payload_type = payload_type
        self.ssrc = ssrc
        mid_id = extension_ids.get(MID, 0)
        abs_id = extension_ids.get(ABS_SEND_TIME, 0)
        level_id = extension_ids.get(AUDIO_LEVEL, 0)
        encoded = mid.encode("utf8") if mid is not None and mid_id else b""
        self.usable = (all(0 <= i <= 14 for i in (mid_id, abs_id, level_id))
                       and (not mid_id or mid is None or 1 <= len(encoded) <= 16))
        self._mid = bytes([(mid_id << 4) | (len(encoded) - 1)]) + encoded if encoded else b""
        self._abs = bytes([(abs_id << 4) | 2]) if abs_id else b""
        self._level = (level_id << 4) if level_id else 0

    def write(self, marker: int, sequence_number: int, timestamp: int, payload: bytes,
              abs_send_time: Optional[int], audio_level: Optional[tuple[bool, int]]) -> bytes:
        """One packet (no CSRC, no padding) with these values."""
        elements = self._mid
        if abs_send_time is not None and self._abs:
            elements += self._abs + (abs_send_time & 0xFFFFFF).to_bytes(3, "big")
        if audio_level is not None and self._level:
            elements += bytes((self._level, (0x80 if audio_level[0] else 0) | (audio_level[1] & 0x7F)))
        second = (0x80 if marker else 0) | self.payload_type
        if not elements:
            return _HEADER.pack(0x80, second, sequence_number, timestamp, self.ssrc) + payload
        elements += b"\x00" * (-len(elements) % 4)
        return _HEADER_WITH_EXTENSIONS.pack(0x90, second, sequence_number, timestamp, self.ssrc,
                                            _ONE_BYTE_PROFILE, len(elements) >> 2) + elements + payload
