"""The server's renegotiations keep the numbers the client's first offer chose.

aiortc offers opus, VP8 and RTX as 96, 97 and 98 and numbers header extensions from
1; Chrome's first offer says opus 111, VP8 96, RTX 97 and, say, ``sdes:mid`` 4. A
renegotiation in aiortc's numbers is refused by Chrome (an extension renumbered) or
silently breaks media (a payload type changing meaning). ``evr.media.sdp.Numbering``
rewrites the server's offers; here it is checked on text and end to end, with aiortc
clients whose first offer is renumbered as a browser's would be.
"""

from __future__ import annotations

import re

from aiortc import RTCPeerConnection, RTCRtpSender
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from test_multiparty import guest_client, ids, invite, light, staff_id

from evr.media.bridge import PINNED
from evr.media.sdp import Numbering, mark_slides, slides_sections

#: A server offer as the bridge makes them (VP8 with RTX, Opus), and lines of offers.
SERVER_OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    "a=rtpmap:96 opus/48000/2\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 97 98\r\na=mid:1\r\na=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    "a=rtpmap:97 VP8/90000\r\na=rtcp-fb:97 nack\r\na=rtpmap:98 rtx/90000\r\na=fmtp:98 apt=97\r\n"
)
SDP_LINES = ["m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "a=rtpmap:111 opus/48000/2",
             "a=rtpmap:96 VP8/90000", "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96", "a=fmtp:97 apt=999999999999",
             "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid", "a=extmap:x y", "a=rtpmap:96 ", "m=", "m=video"]

#: Chrome's numbers (from a Chromium 120 offer): payload types by codec, and extension ids.
CHROME_PT = {"opus/48000": 111, "vp8/90000": 96, "rtx:vp8/90000": 97}
CHROME_EXT = {"urn:ietf:params:rtp-hdrext:sdes:mid": 4,
              "urn:ietf:params:rtp-hdrext:ssrc-audio-level": 1,
              "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 2}


def as_chrome(sdp: str) -> str:
    """An aiortc offer (VP8 and Opus) renumbered as Chrome numbers it."""
    current = Numbering.of(sdp)

    def renumber(section: str) -> str:
        kind = section[2:7] if section.startswith("m=") else ""
        mapping = {str(pt): str(CHROME_PT[name]) for name, pt in current.codecs.get(kind, {}).items()
                   if name in CHROME_PT}

        def pt(match: re.Match[str]) -> str:
            return mapping.get(match.group(0), match.group(0))

        section = re.sub(r"^m=.*$", lambda m: re.sub(r"(?<= )\d+(?= |$)", pt, m.group(0)), section,
                         count=1, flags=re.MULTILINE)
        section = re.sub(r"(?<=^a=rtpmap:)\d+|(?<=^a=fmtp:)\d+|(?<=^a=rtcp-fb:)\d+|(?<=apt=)\d+", pt, section,
                         flags=re.MULTILINE)
        return re.sub(r"^a=extmap:(\d+) (\S+)",
                      lambda m: f"a=extmap:{CHROME_EXT.get(m.group(2), m.group(1))} {m.group(2)}",
                      section, flags=re.MULTILINE)

    return "".join(renumber(section) for section in re.split(r"(?=^m=)", sdp, flags=re.MULTILINE))


async def aiortc_offer(*kinds: str) -> str:
    """An offer made as the bridge makes its own: VP8 (with RTX) and Opus only."""
    pc = RTCPeerConnection()
    for kind in kinds:
        transceiver = pc.addTransceiver(kind, direction="sendrecv")
        caps = RTCRtpSender.getCapabilities(kind).codecs
        transceiver.setCodecPreferences([c for c in caps if c.mimeType.lower() in PINNED[kind]])
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_the_servers_offer_is_renumbered_to_the_clients_first_offer():
    chrome = as_chrome(await aiortc_offer("audio", "video"))
    numbering = Numbering.of(chrome)
    assert numbering.codecs["audio"]["opus/48000"] == 111 and numbering.codecs["video"]["rtx:vp8/90000"] == 97
    server = await aiortc_offer("audio", "video", "video", "audio")
    rewritten = numbering.apply(server)
    again = Numbering.of(rewritten)
    for kind in ("audio", "video"):
        assert again.codecs[kind] == numbering.codecs[kind]
    assert again.extensions == {uri: numbering.extensions[uri] for uri in again.extensions}
    assert re.findall(r"^m=video \S+ \S+ (.*?)\r?$", rewritten, re.MULTILINE) == ["96 97", "96 97"]
    assert re.findall(r"apt=(\d+)", rewritten) == ["96", "96"]
    # Every line other than the numbers is kept.
    assert rewritten.count("a=mid:") == server.count("a=mid:") and rewritten.count("a=ice-ufrag") == 4


async def test_a_codec_or_extension_the_client_never_offered_is_left_out():
    client = re.sub(r"^a=extmap:\d+ http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n", "",
                    await aiortc_offer("audio", "video"), flags=re.MULTILINE)
    client = re.sub(r"^a=(rtpmap|fmtp|rtcp-fb):98 .*\r\n", "", client, flags=re.MULTILINE).replace(" 97 98", " 97")
    rewritten = Numbering.of(client).apply(await aiortc_offer("video"))
    assert "abs-send-time" not in rewritten and "rtx/" not in rewritten and "apt=" not in rewritten
    assert re.search(r"^m=video \S+ \S+ 97\r?$", rewritten, re.MULTILINE)


def test_slides_are_marked_and_found():
    sdp = "v=0\r\nm=audio 9 x 96\r\na=mid:0\r\nm=video 9 x 97\r\na=mid:1\r\nm=video 9 x 97\r\na=mid:2\r\n"
    assert slides_sections(sdp) == set()
    assert slides_sections(mark_slides(sdp, "2")) == {2}


async def test_a_browser_numbered_call_renegotiates_and_media_flows_every_way(call, new_client):
    """Clients whose first offers use Chrome's numbers: a guest joins (the server offers
    the others its tracks, in their numbers) and everyone receives everyone."""
    options = {**light(), "first_offer": as_chrome}
    c = await call(**options)
    guest = await invite(c.officer, c.id)
    _, interpreter = await guest_client(call, new_client, guest["join_url"], **options)
    guest_id, officer = f"guest:{guest['id']}", staff_id(c)
    for client, others in ((c.victim, (officer, guest_id)), (c.console, ("victim", guest_id)),
                           (interpreter, ("victim", officer))):
        for other in others:
            await client.wait_from(other, audio=25, video=10, timeout=15)
        assert client.server_offers >= 1
        assert all(p["connected"] for p in ids(client.state()).values())


@given(st.lists(st.sampled_from(SDP_LINES) | st.text(max_size=40), max_size=30).map("\r\n".join))
@hypothesis_settings(max_examples=300, deadline=None)
def test_any_client_offer_text_gives_a_numbering_that_never_breaks_the_servers_offer(client_offer: str):
    """``Numbering.of`` reads the client's offer (outside input): whatever it holds,
    it and the rewrite of a real server offer never raise."""
    rewritten = Numbering.of(client_offer).apply(SERVER_OFFER)
    assert rewritten.count("m=") == SERVER_OFFER.count("m=")
