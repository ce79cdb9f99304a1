"""Offers whose only candidates are mDNS names (a browser with no camera permission
yet hides its addresses so): the server still answers with its own candidates and
connects through the browser's peer-reflexive candidate."""

from __future__ import annotations

import asyncio
import re

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from conftest import eventually
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from evr.media.bridge import Room
from evr.media.sdp import is_mdns_candidate, reachable_candidates
from evr.media.sources import EncodedSourceTrack, opus_clip, vp8_clip

HOST = "a=candidate:1 1 udp 2130706431 192.0.2.7 50000 typ host"
HIDDEN = "a=candidate:2 1 udp 2130706431 6f1c2d3e-0000-4a4a-8b8b-123456789abc.local 50001 typ host"


def offer(*lines: str) -> str:
    return "\r\n".join(["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                        "a=mid:0", *lines, "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:1", *lines]) + "\r\n"


def test_mdns_names_are_taken_out_and_so_is_an_end_they_would_make_fatal():
    assert is_mdns_candidate(HIDDEN) and not is_mdns_candidate(HOST)
    assert is_mdns_candidate("candidate:2 1 udp 1 ABC.LOCAL. 5 typ host")
    mixed = reachable_candidates(offer(HOST, HIDDEN, "a=end-of-candidates"))
    assert HIDDEN not in mixed and mixed.count(HOST) == 2 and mixed.count("a=end-of-candidates") == 2
    hidden = reachable_candidates(offer(HIDDEN, "a=end-of-candidates"))
    assert "a=candidate" not in hidden and "a=end-of-candidates" not in hidden
    assert "a=mid:1" in hidden and hidden.count("m=") == 2
    assert reachable_candidates(offer()) == offer()  # nothing to take out: unchanged


@given(st.lists(st.one_of(st.sampled_from([HOST, HIDDEN, "a=end-of-candidates", "a=candidate:", "a=candidate:x y z w .local",
                                            "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:9"]),
                          st.text(max_size=40).map(lambda t: "a=candidate:" + t.replace("\r", "").replace("\n", ""))),
                max_size=30))
@hypothesis_settings(max_examples=200, deadline=None)
def test_any_offer_text_keeps_no_mdns_candidate_and_nothing_else_changes(lines):
    """Offers are outside input: whatever their candidate lines hold, no exception,
    no mDNS candidate left, and every other line kept in its place."""
    sdp = offer(*lines)
    kept = reachable_candidates(sdp).split("\r\n")
    assert not any(line.startswith("a=candidate:") and is_mdns_candidate(line) for line in kept)
    dropped = [line for line in sdp.split("\r\n") if line not in kept]
    assert all(line.startswith("a=candidate:") or line == "a=end-of-candidates" for line in dropped)


def hide_addresses(sdp: str) -> str:
    """Every host candidate's address replaced by an mDNS name, as Firefox, Chromium and
    Safari do before the page may use the camera."""
    count = iter(range(1, 1000))

    def hide(match: re.Match[str]) -> str:
        fields = match.group(0).split(" ")
        fields[4] = f"{next(count):08x}-0000-4a4a-8b8b-123456789abc.local"
        return " ".join(fields)

    hidden = re.sub(r"a=candidate:\S+ \d+ \w+ \d+ \S+ \d+ typ host", hide, sdp)
    assert "a=end-of-candidates" in hidden and ".local" in hidden
    return hidden


async def test_an_offer_with_only_mdns_candidates_connects():
    async def changed(_room: Room) -> None:
        pass

    room = Room("c1", [], changed, [])
    victim = room.participant("victim", "victim")
    browser = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    browser.addTransceiver(EncodedSourceTrack(opus_clip()), direction="sendrecv")
    browser.addTransceiver(EncodedSourceTrack(vp8_clip(160, 120, seconds=1)), direction="sendrecv")
    try:
        await browser.setLocalDescription(await browser.createOffer())
        answer = await room.connect(victim, hide_addresses(browser.localDescription.sdp))
        assert "a=candidate:" in answer  # the server's own, whatever the offer held
        # The page trickles another hidden candidate and its end of candidates: both harmless.
        await room.add_candidate(victim, {"candidate": HIDDEN.removeprefix("a="), "sdpMid": "0"})
        await room.add_candidate(victim, None)
        await browser.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        assert victim.leg is not None
        server = victim.leg.pc
        await eventually(lambda: (browser.iceConnectionState, server.iceConnectionState),
                         lambda states: states == ("completed", "completed"), timeout=10.0,
                         what="ICE through the peer-reflexive candidate")
        await eventually(lambda: victim.leg.counters.audio_in_packets if victim.leg else 0, lambda n: n > 5,
                         timeout=10.0, what="the browser's audio at the server")
    finally:
        await room.close()
        await browser.close()
        await asyncio.sleep(0)
