"""``evr serve --workers N``: calls' media in worker processes, one consultation
pinned to one worker; a worker that dies takes only its own calls, which rejoin on
a live worker while the recording shows the break and goes on.

The app here is the one ``evr serve --workers 2`` runs (``create_app(workers=2)``),
with aiortc clients over real sockets.
"""

from __future__ import annotations

import os
import signal
from typing import Any, AsyncIterator

import pytest
from aiohttp.test_utils import TestServer
from conftest import Clock, eventually

from evr.app import create_app
from evr.config import Settings
from evr.http import HUB


@pytest.fixture
async def server(settings: Settings, clock: Clock) -> AsyncIterator[TestServer]:
    """As conftest's, with the media in two worker processes."""
    test_server = TestServer(create_app(settings, clock=clock, workers=2))
    await test_server.start_server()
    try:
        yield test_server
    finally:
        await test_server.close()


async def recordings_of(c: Any) -> list[dict[str, Any]]:
    response = await c.officer.get(f"/api/consultations/{c.id}/recordings")
    assert response.status == 200
    return (await response.json())["recordings"]


def pool(server: TestServer) -> Any:
    media = server.app[HUB].media
    assert media is not None
    return media


async def test_each_call_is_pinned_to_a_worker_and_media_flows_both_ways(call, server):
    first, second = await call(), await call(officer_name="bob")
    for c in (first, second):
        await c.victim.wait_media(audio=20, video=20)
        await c.console.wait_media(audio=20, video=20)
    workers = pool(server).workers
    assert {first.id} == set(workers[0].rooms) and {second.id} == set(workers[1].rooms)
    # Two processes of their own, both running, each holding its own call's peer connections.
    assert len({w.process.pid for w in workers}) == 2 and all(w.process.returncode is None for w in workers)
    # What the console lists comes from the worker's room: who is connected, and the figures.
    consultation = await first.officer.consultation(first.id)
    assert consultation["status"] == "live"
    media = await eventually(lambda: first.officer.consultation(first.id),
                             lambda c: all(p["media"]["video_in_frames"] > 0 for p in c["participants"]),
                             what="media figures from the worker")
    assert {p["role"] for p in media["participants"] if p["connected"]} == {"victim", "officer"}
    await first.officer.post(f"/api/consultations/{first.id}/close")
    await eventually(lambda: first.victim.close_code, lambda code: code == 4000, what="the victim told closed")
    assert first.id not in workers[0].rooms
    recordings = await eventually(lambda: recordings_of(first),
                                  lambda rs: len(rs) == 2 and all(r["status"] == "complete" for r in rs),
                                  timeout=20.0, what="both recordings sealed by the worker")
    assert sorted(r["participant"] for r in recordings) == ["officer", "victim"]


async def test_a_worker_that_dies_takes_only_its_calls_which_rejoin_elsewhere(call, server):
    hit, spared = await call(), await call(officer_name="bob")
    for c in (hit, spared):
        await c.victim.wait_media(audio=20, video=20)
        await c.console.wait_media(audio=20, video=20)
    await eventually(lambda: recordings_of(hit), lambda rs: len(rs) == 2, what="the call recorded")
    workers = pool(server).workers
    dead = next(w for w in workers if hit.id in w.rooms)
    assert spared.id not in dead.rooms
    spared_before = spared.victim.video_frames

    os.kill(dead.process.pid, signal.SIGKILL)
    # The pages are told to rejoin (1012, service restart); the other call never notices.
    await eventually(lambda: (hit.victim.close_code, hit.console.close_code), lambda codes: codes == (1012, 1012),
                     what="the dead worker's call's sockets closed 1012")
    assert spared.victim.close_code is None and spared.console.close_code is None
    await eventually(lambda: spared.victim.video_frames, lambda n: n > spared_before + 30,
                     what="the spared call's media going on")
    # Its recordings end with the break (server_restart), recovered from the worker's spool.
    ended = await eventually(lambda: recordings_of(hit),
                             lambda rs: len(rs) == 2 and all(r["status"] == "terminated" for r in rs),
                             timeout=20.0, what="the dead worker's recordings recovered")
    assert {r["participant"] for r in ended} == {"victim", "officer"}

    # The pages rejoin: the room opens on a live worker and media flows again.
    victim = call.client(hit.phone.session, hit.link.ws_url)
    console = call.client(hit.officer.client.session, hit.officer.ws_url(hit.id))
    await victim.join()
    await console.join()
    await victim.wait_media(audio=20, video=20)
    await console.wait_media(audio=20, video=20)
    assert any(hit.id in w.rooms for w in workers if w.alive)
    recordings = await eventually(lambda: recordings_of(hit), lambda rs: len(rs) == 4,
                                  what="the call recorded again after the rejoin")
    later = [r for r in recordings if r["status"] == "recording"]
    assert len(later) == 2 and min(r["started_at"] for r in later) >= max(r["ended_at"] for r in ended)
    # The dead worker was started again.
    await eventually(lambda: dead.alive, what="the worker restarted")


# The call's behaviour end to end, as the tests of the in-process bridge check it, with
# the media in the workers (this module's server): what a page does works the same.
from test_calls import (  # noqa: E402, F401
    test_keyframe_requests_travel_upstream_rate_limited,
    test_media_flows_both_ways_and_is_counted,
    test_pause_stops_media_and_resume_restarts_it,
    test_sergeant_joining_sees_the_victim,
    test_victim_rejoins_after_the_connection_drops,
)
from test_multiparty import (  # noqa: E402, F401
    test_a_screen_share_is_relayed_and_recorded_as_its_own_recording,
    test_bad_renegotiations_are_refused_and_the_call_goes_on,
    test_chat_reaches_everyone_and_the_transcript,
    test_staff_end_a_guests_link_and_the_call_goes_on,
    test_three_people_each_receive_both_others_audio_and_video,
)
from test_signalling import test_malformed_unknown_and_bad_sdp_get_errors_and_the_socket_survives  # noqa: E402, F401
