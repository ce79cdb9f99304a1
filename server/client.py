"""A WebRTC client for EVR's signalling: what a browser does, in Python (aiortc).

Used by the tests and benchmarks, and handy for checking a deployment::

    async with aiohttp.ClientSession() as http:
        client = CallClient(http, "ws://host/j/<token>/ws")
        await client.join()       # a victim's link is claimed first, as the page does
        ...
        await client.leave()

Like the pages, it uses exactly the ICE servers the server's ``config`` message
names: none by default (aiortc would otherwise ask a public STUN server).

It sends pre-encoded media (:mod:`evr.media.sources`), so it costs almost no CPU,
and counts what arrives: Opus packets and VP8 frames (``decode=False``, the default),
or decoded frames (``decode=True``) to prove the relayed stream is valid. In a call
of more than two it answers the server's offers as a page does, counts what arrives
on each mid (:attr:`CallClient.by_mid`), and knows from the last ``state`` who is on
which mid (:meth:`CallClient.received_from`); it can share a screen
(:meth:`CallClient.share_screen`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from typing import Any, Callable, Optional

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame
from yarl import URL

from .media.passthrough import EncodedFrame, attach_sink, on_keyframe_request
from .media.sdp import mark_slides
from .media.sources import Clip, EncodedSourceTrack, opus_clip, vp8_clip

log = logging.getLogger(__name__)

VICTIM_SOCKET = re.compile(r"^/j/[^/]+/ws$")



async def claim_link(http: aiohttp.ClientSession, link_url: str) -> int:
    """``POST {link}/claim`` as the victim's page does (same-origin ``Origin``): the
    binding cookie lands in ``http``'s jar. Returns the status (200 when this client
    holds the link; 403, 404, 410 otherwise, and the socket will then be refused)."""
    url = URL(link_url.replace("ws", "http", 1) if link_url.startswith("ws") else link_url)
    origin = f"{url.scheme}://{url.raw_authority}"
    async with http.post(url / "claim", headers={"Origin": origin}) as response:
        if response.status != 200:
            log.info("claiming the link was refused (%d)", response.status)
        return response.status


class CallClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws_url: str,
        headers: Optional[dict[str, str]] = None,
        decode: bool = False,
        video_size: tuple[int, int] = (320, 240),
        video_bitrate: int = 300_000,
        clips: Optional[dict[str, Clip]] = None,
        source_factory: Callable[[Clip], EncodedSourceTrack] = EncodedSourceTrack,
        first_offer: Optional[Callable[[str], str]] = None,
    ) -> None:
        self.http = http
        self.ws_url = ws_url
        self.headers = headers or {}
        self.decode = decode
        self.video_size = video_size
        self.video_bitrate = video_bitrate
        self.clips = clips
        self.source_factory = source_factory
        #: Rewrites the first offer's SDP as sent (a test's stand-in for a browser's
        #: own numbering: Chrome's payload types and extension ids are not aiortc's).
        self.first_offer = first_offer or (lambda sdp: sdp)
        self.ws: Optional[aiohttp.ClientWebSocketResponse] = None
        self.pc: Optional[RTCPeerConnection] = None
        self.sources: dict[str, EncodedSourceTrack] = {}
        self.messages: list[dict[str, Any]] = []
        self.audio_packets = 0
        self.video_frames = 0
        self.video_keyframes = 0
        self.decoded_sizes: list[tuple[int, int]] = []
        #: What arrived on each mid: {"audio": packets, "video": frames, "keyframes": n}.
        self.by_mid: dict[str, Counter[str]] = {}
        #: Monotonic arrival time of the last frame on each mid (gap measurements).
        self.last_arrival: dict[str, float] = {}
        #: The longest silence between two frames on each mid, in seconds.
        self.longest_gap: dict[str, float] = {}
        #: Offers the server made (renegotiations) and answered here.
        self.server_offers = 0
        self.screen: Optional[RTCRtpTransceiver] = None
        self._negotiation = asyncio.Lock()
        self.close_code: Optional[int] = None
        self.closed = asyncio.Event()
        self._answer: Optional[asyncio.Future[str]] = None
        self._reader: Optional[asyncio.Task[None]] = None
        self._consumers: set[asyncio.Task[None]] = set()
        self._message_event = asyncio.Event()
        #: From the server's ``config`` message; empty (no STUN, no TURN) until then.
        self.ice_servers: list[RTCIceServer] = []

    # -- signalling -----------------------------------------------------------

    async def connect(self) -> None:
        """Open the signalling socket (without an offer). On a victim's link, first
        claim it for this client's cookie jar, as the page does at its first button."""
        if VICTIM_SOCKET.search(URL(self.ws_url).path):
            await claim_link(self.http, self.ws_url.removesuffix("/ws"))
        self.ws = await self.http.ws_connect(self.ws_url, headers=self.headers, max_msg_size=0)
        self._reader = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(msg.data)
            self.messages.append(message)
            self._message_event.set()
            if message.get("type") == "config":
                self.ice_servers = [RTCIceServer(s["urls"], s.get("username"), s.get("credential"))
                                    for s in message.get("ice_servers", [])]
            if message.get("type") == "offer":
                task = asyncio.create_task(self._answer_server(message["sdp"], self.pc))
                self._consumers.add(task)
                task.add_done_callback(self._consumers.discard)
            if message.get("type") == "answer" and self._answer and not self._answer.done():
                self._answer.set_result(message["sdp"])
            elif message.get("type") == "error" and self._answer and not self._answer.done():
                self._answer.set_exception(RuntimeError(f"{message.get('code')}: {message.get('message')}"))
        if ws is self.ws:
            self.close_code = ws.close_code
            self.closed.set()

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The first message (already received or coming) for which ``predicate`` holds."""
        async def scan() -> dict[str, Any]:
            seen = 0
            while True:
                for message in self.messages[seen:]:
                    if predicate(message):
                        return message
                seen = len(self.messages)
                self._message_event.clear()
                await self._message_event.wait()

        return await asyncio.wait_for(scan(), timeout)

    # -- media ----------------------------------------------------------------

    async def _answer_server(self, sdp: str, pc: Optional[RTCPeerConnection]) -> None:
        """Answer a server's offer (someone joined or left) made for the connection
        ``pc`` (None: the one being set up now); an offer for a replaced one is moot."""
        async with self._negotiation:
            if self.pc is None or (pc is not None and pc is not self.pc):
                return
            pc = self.pc
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            self.server_offers += 1
            await self.send({"type": "answer", "sdp": pc.localDescription.sdp})

    async def share_screen(self, clip: Optional[Clip] = None, timeout: float = 10.0) -> EncodedSourceTrack:
        """Start sharing a screen: a third, ``sendonly`` video transceiver marked
        ``a=content:slides``, offered on the same connection (a renegotiation)."""
        async with self._negotiation:
            pc = self.pc
            assert pc is not None, "join first"
            source = self.sources["screen"] = self.source_factory(clip or vp8_clip(480, 360, fps=10, bitrate=200_000))
            if self.screen is None:
                self.screen = pc.addTransceiver(source, direction="sendonly")
                caps = RTCRtpSender.getCapabilities("video").codecs
                self.screen.setCodecPreferences([c for c in caps if c.mimeType.lower() in ("video/vp8", "video/rtx")])
            else:
                self.screen.sender.replaceTrack(source)
                self.screen.direction = "sendonly"
            on_keyframe_request(self.screen.sender, source.request_keyframe)
            await pc.setLocalDescription(await pc.createOffer())
            assert self.screen.mid is not None
            await self._offer_current(self.screen.mid, timeout)
            return source

    async def stop_screen(self, timeout: float = 10.0) -> None:
        """Stop sharing: the screen's transceiver goes inactive (a renegotiation)."""
        async with self._negotiation:
            assert self.screen is not None and self.pc is not None
            self.screen.direction = "inactive"
            await self.pc.setLocalDescription(await self.pc.createOffer())
            await self._offer_current(None, timeout)

    async def _offer_current(self, mark: Optional[str], timeout: float) -> None:
        pc = self.pc
        assert pc is not None
        sdp = pc.localDescription.sdp
        if mark is not None:
            sdp = mark_slides(sdp, mark)
        self._answer = asyncio.get_running_loop().create_future()
        await self.send({"type": "offer", "sdp": sdp})
        answer = await asyncio.wait_for(self._answer, timeout)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    def restart_gaps(self) -> None:
        """Measure silences from now on (:attr:`longest_gap`), not from before."""
        self.longest_gap.clear()
        self.last_arrival.clear()

    def state(self) -> dict[str, Any]:
        """The last ``state`` message."""
        return next((m for m in reversed(self.messages) if m.get("type") == "state"), {})

    def received_from(self, participant_id: str) -> Counter[str]:
        """What arrived from one participant (by the mids the last ``state`` names):
        ``audio`` packets, ``video`` frames, ``screen`` frames."""
        total: Counter[str] = Counter()
        for entry in self.state().get("participants", []):
            if entry.get("id") == participant_id:
                for feed, mid in (entry.get("mids") or {}).items():
                    counts = self.by_mid.get(mid, Counter())
                    total[feed] += counts["audio"] if feed == "audio" else counts["video"]
        return total

    async def wait_from(self, participant_id: str, *, audio: int = 10, video: int = 10, screen: int = 0,
                        timeout: float = 10.0) -> None:
        """Wait until at least this much more media arrived from ``participant_id``."""
        start = self.received_from(participant_id)

        async def poll() -> None:
            while True:
                now = self.received_from(participant_id)
                if (now["audio"] - start["audio"] >= audio and now["video"] - start["video"] >= video
                        and now["screen"] - start["screen"] >= screen):
                    return
                await asyncio.sleep(0.05)

        try:
            await asyncio.wait_for(poll(), timeout)
        except asyncio.TimeoutError:
            now = dict(self.received_from(participant_id))
            raise AssertionError(f"media from {participant_id} did not arrive: {now} (was {dict(start)}); "
                                 f"state {self.state().get('participants')}") from None

    async def join(self, timeout: float = 10.0) -> None:
        """Connect if needed, send an offer with one audio and one video transceiver,
        apply the answer. Called again, it is a rejoin: a new peer connection."""
        if self.ws is None or self.ws.closed:
            await self.connect()
        await self.wait_for(lambda m: m["type"] == "config", timeout)
        # Held until the answer is applied: the server offers the others' tracks right
        # after its answer, and that offer must wait for it (as a page's queue does).
        async with self._negotiation:
            await self._offer_new(timeout)

    async def _offer_new(self, timeout: float) -> None:
        await self._close_pc()
        self.screen = None
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.ice_servers)))
        clips = self.clips or {
            "audio": opus_clip(), "video": vp8_clip(*self.video_size, bitrate=self.video_bitrate)
        }
        for kind in ("audio", "video"):
            source = self.sources[kind] = self.source_factory(clips[kind])
            transceiver = pc.addTransceiver(source, direction="sendrecv")
            wanted = "audio/opus" if kind == "audio" else "video/vp8"
            caps = RTCRtpSender.getCapabilities(kind).codecs
            transceiver.setCodecPreferences([c for c in caps if c.mimeType.lower() in (wanted, "video/rtx")])
            if kind == "video":
                on_keyframe_request(transceiver.sender, source.request_keyframe)
        pc.on("track", self._on_track)
        await pc.setLocalDescription(await pc.createOffer())
        self._answer = asyncio.get_running_loop().create_future()
        await self.send({"type": "offer", "sdp": self.first_offer(pc.localDescription.sdp)})
        sdp = await asyncio.wait_for(self._answer, timeout)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    def _on_track(self, track: MediaStreamTrack) -> None:
        if self.pc is None:
            raise RuntimeError("a track arrived with no peer connection")
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
        if self.decode and track.kind == "video":
            task = asyncio.create_task(self._consume(track))
            self._consumers.add(task)
            task.add_done_callback(self._consumers.discard)
        else:
            mid = transceiver.mid or "?"
            attach_sink(transceiver.receiver, track.kind,
                        self._audio_counter(mid) if track.kind == "audio" else self._video_counter(mid))

    def _arrived(self, mid: str) -> Counter[str]:
        now = asyncio.get_running_loop().time()
        last = self.last_arrival.get(mid)
        if last is not None:
            self.longest_gap[mid] = max(self.longest_gap.get(mid, 0.0), now - last)
        self.last_arrival[mid] = now
        return self.by_mid.setdefault(mid, Counter())

    def _audio_counter(self, mid: str) -> Callable[[EncodedFrame], None]:
        def count(_frame: EncodedFrame) -> None:
            self.audio_packets += 1
            self._arrived(mid)["audio"] += 1

        return count

    def _video_counter(self, mid: str) -> Callable[[EncodedFrame], None]:
        def count(frame: EncodedFrame) -> None:
            self.video_frames += 1
            self.video_keyframes += frame.is_keyframe
            counts = self._arrived(mid)
            counts["video"] += 1
            counts["keyframes"] += frame.is_keyframe

        return count

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if not isinstance(frame, VideoFrame):
                    raise TypeError(f"a decoded video track gave {type(frame).__name__}, not a VideoFrame")
                self.video_frames += 1
                self.decoded_sizes.append((frame.width, frame.height))
        except MediaStreamError:
            pass

    async def wait_media(self, *, audio: int = 10, video: int = 10, timeout: float = 10.0) -> None:
        """Wait until at least ``audio`` more audio packets and ``video`` more video frames
        arrived than had arrived when called: counts of new media, not totals (so never
        ``video=self.video_frames + n``, which waits for the frames seen so far a second time)."""
        target = (self.audio_packets + audio, self.video_frames + video)

        async def poll() -> None:
            while self.audio_packets < target[0] or self.video_frames < target[1]:
                await asyncio.sleep(0.05)

        try:
            await asyncio.wait_for(poll(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"media did not arrive: audio {self.audio_packets}/{target[0]}, video {self.video_frames}/{target[1]}"
            ) from None

    # -- leaving ----------------------------------------------------------------

    async def _close_pc(self) -> None:
        if self.pc is not None:
            pc, self.pc = self.pc, None
            await pc.close()

    async def drop(self) -> None:
        """Vanish without a word, as a phone losing its network does."""
        await self._close_pc()
        if self.ws is not None:
            await self.ws.close()

    async def leave(self) -> None:
        await self.drop()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        for task in list(self._consumers):
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
