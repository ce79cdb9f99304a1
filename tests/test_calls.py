"""End to end: aiortc clients as victim and officer talk through the server over loopback."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

from aiortc import RTCPeerConnection
from conftest import eventually, in_process_room

from evr.http import HUB
from evr.media.passthrough import send_pli

UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def participant(detail, role):
    return next(p for p in detail["participants"] if p["role"] == role)


async def test_media_flows_both_ways_and_is_counted(call):
    c = await call()
    await c.victim.wait_media(audio=50, video=30)
    await c.console.wait_media(audio=50, video=30)
    assert c.victim.video_keyframes >= 1 and c.console.video_keyframes >= 1
    detail = await c.officer.consultation(c.id)
    assert detail["status"] == "live"
    assert detail["arrived_at"] is not None
    for role in ("victim", "officer"):
        p = participant(detail, role)
        assert p["connected"] is True
        media = p["media"]
        assert media["audio_in_packets"] > 0 and media["video_in_frames"] > 0
        assert media["audio_out_packets"] > 0 and media["video_out_frames"] > 0
    # What the server sent the victim is what the victim received (give or take in-flight).
    assert participant(detail, "victim")["media"]["video_out_frames"] >= c.victim.video_frames - 5
    state = await c.victim.wait_for(lambda m: m["type"] == "state" and m["status"] == "live")
    assert {p["role"] for p in state["participants"]} == {"victim", "officer"}
    # Both are told the call is recorded once media flows.
    await c.victim.wait_for(lambda m: m["type"] == "state" and m["recording"] is True)


async def test_relayed_video_decodes_at_the_far_end(call):
    """Passthrough keeps the VP8 stream valid: the officer's client decodes it."""
    c = await call(decode=True)
    await c.console.wait_media(audio=10, video=20)
    assert set(c.console.decoded_sizes) == {(320, 240)}


async def test_victim_rejoins_after_the_connection_drops(call):
    c = await call()
    await c.console.wait_media(audio=20, video=15)
    await c.victim.drop()
    await c.console.wait_for(
        lambda m: m["type"] == "state"
        and any(p["role"] == "victim" and not p["connected"] for p in m["participants"])
    )
    assert participant(await c.officer.consultation(c.id), "victim")["connected"] is False
    before = c.console.video_frames
    again = call.client(c.phone.session, c.victim.ws_url)
    await again.join()
    await c.console.wait_media(audio=20, video=15)
    await again.wait_media(audio=20, video=15)
    assert c.console.video_frames > before
    detail = await c.officer.consultation(c.id)
    p = participant(detail, "victim")
    assert p["connected"] is True and p["media"]["video_in_frames"] > 0
    assert len([p for p in detail["participants"] if p["role"] == "victim"]) == 1


@in_process_room
async def test_new_offer_on_the_same_socket_replaces_the_connection(call, server):
    c = await call()
    await c.console.wait_media(audio=10, video=10)
    room = server.app[HUB].rooms[c.id]
    old_pc = room.participants["victim"].leg.pc
    await c.victim.join()  # rejoin: a fresh peer connection, same socket
    await c.console.wait_media(audio=20, video=15)
    assert room.participants["victim"].leg.pc is not old_pc
    assert old_pc.connectionState == "closed"
    # Each side feeds exactly one live outgoing track per kind: the old leg's are gone.
    for p in room.participants.values():
        for kind in ("audio", "video"):
            assert len(p.watchers[kind]) == 1
            assert all(t.readyState == "live" for t in p.watchers[kind])


async def test_pause_stops_media_and_resume_restarts_it(call):
    c = await call()
    await c.console.wait_media(audio=20, video=15)
    await c.victim.send({"type": "pause"})
    await c.console.wait_for(lambda m: m["type"] == "state" and m["status"] == "paused")
    assert (await c.officer.consultation(c.id))["status"] == "paused"
    await asyncio.sleep(0.3)  # what was in flight
    frozen = (c.console.video_frames, c.console.audio_packets, c.victim.video_frames)
    await asyncio.sleep(1.0)
    assert (c.console.video_frames, c.console.audio_packets, c.victim.video_frames) == frozen
    await c.console.send({"type": "resume"})  # the other side may resume
    await c.victim.wait_for(lambda m: m["type"] == "state" and m["status"] == "live")
    await c.console.wait_media(audio=20, video=15)
    await c.victim.wait_media(audio=20, video=15)
    assert (await c.officer.consultation(c.id))["status"] == "live"


@in_process_room
async def test_close_tells_everyone_tears_down_within_2s_and_leaves_nothing(call, server):
    c = await call()
    room = server.app[HUB].rooms[c.id]
    await c.victim.wait_media(audio=10, video=10)
    await c.console.wait_media(audio=10, video=10)
    pcs = [weakref.ref(p.leg.pc) for p in room.participants.values()]
    server_pcs = [p.leg.pc for p in room.participants.values()]
    started = time.monotonic()
    response = await c.officer.post(f"/api/consultations/{c.id}/close")
    assert response.status == 200
    await asyncio.wait_for(asyncio.gather(c.victim.closed.wait(), c.console.closed.wait()), 2.0)
    assert all(pc.connectionState == "closed" for pc in server_pcs)
    assert time.monotonic() - started < 2.0
    assert c.victim.close_code == c.console.close_code == 4000
    assert any(m["type"] == "closed" for m in c.victim.messages)
    assert any(m["type"] == "closed" for m in c.console.messages)
    await c.victim.leave()
    await c.console.leave()
    del server_pcs, room
    assert c.id not in server.app[HUB].rooms
    # Nothing of the consultation is left within half a second: no peer connection, no
    # task, no thread.
    def left() -> dict[str, list]:
        gc.collect()
        return {
            "peer connections": [ref for ref in pcs if ref() is not None],
            "tasks": [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and _is_media_task(t)],
            "threads": [t.name for t in threading.enumerate() if "decoder" in t.name],
            "objects": [o for o in gc.get_objects() if isinstance(o, RTCPeerConnection)],
        }

    await eventually(left, lambda found: not any(found.values()), timeout=0.5, interval=0.1,
                     what="the consultation's teardown")
    # ...and the link is dead, page and socket.
    assert (await c.phone.get(c.link.path)).status == 410
    assert (await c.phone.get(c.link.path + "/ws", headers=UPGRADE)).status == 410


def _is_media_task(task: asyncio.Task) -> bool:
    text = repr(task.get_coro())
    return any(word in text for word in ("aiortc", "aioice", "RTC", "Relay", "Leg", "Room"))


async def test_second_browser_cannot_open_the_socket(link, new_client):
    opened = await link()
    other = await new_client()
    assert (await other.get(opened.path + "/ws", headers=UPGRADE)).status == 403


async def test_another_officer_cannot_join_and_records_role_is_refused(staff):
    officer = await staff()
    created = await officer.create()
    bob = await staff("bob", "officer")
    rita = await staff("rita", "records")
    assert (await bob.get(f"/api/consultations/{created['id']}/ws")).status == 404
    assert (await rita.get(f"/api/consultations/{created['id']}/ws")).status == 403


async def test_sergeant_joining_sees_the_victim(call, staff):
    c = await call()
    sarge = await staff("sarge", "sergeant")
    third = call.client(sarge.client.session, sarge.ws_url(c.id))
    await third.join()
    await third.wait_media(audio=20, video=15)
    await c.victim.wait_media(audio=20, video=15)  # still the officer's picture
    detail = await c.officer.consultation(c.id)
    assert sorted(p["role"] for p in detail["participants"]) == ["officer", "sergeant", "victim"]


async def test_keyframe_requests_travel_upstream_rate_limited(call):
    c = await call()
    await c.console.wait_media(audio=10, video=20)
    source = c.victim.sources["video"]
    # A new consumer (the officer) started: the victim was asked for a keyframe.
    assert source.keyframe_requests >= 1
    before, keyframes = source.keyframe_requests, c.console.video_keyframes
    receiver = next(t.receiver for t in c.console.pc.getTransceivers() if t.kind == "video")
    for _ in range(5):  # a burst of PLIs from the officer's side...
        assert send_pli(receiver)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    # ...reaches the victim's encoder, at most once per 300 ms...
    assert 1 <= source.keyframe_requests - before <= 2
    # ...and a keyframe comes back to the officer.
    await c.console.wait_media(audio=5, video=5)
    assert c.console.video_keyframes > keyframes
