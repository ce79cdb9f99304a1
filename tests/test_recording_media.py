"""Recording under stress: pauses and rejoins, a stalled disk, and ``kill -9`` mid-call.

SQLite only: what is tested here is the media path and the files, not the database.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import aiohttp
import av
import pytest
from conftest import ELIGIBLE, PASSWORD, eventually, link_path

from evr.client import CallClient
from evr.media.passthrough import TIME_BASE, EncodedFrame
from evr.media.sources import opus_clip, vp8_clip
from evr.recording import recorder as recorder_module
from evr.recording.recorder import End, Gap, Recorder, SegmentClosed


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path / 'evr.sqlite3'}"


@pytest.fixture
def settings(settings):
    settings.recording_segment_seconds = 1.0
    return settings


async def test_pause_and_reconnect_leave_true_gaps_in_one_recording(call):
    c = await call()
    await c.console.wait_media(audio=20, video=15)
    await asyncio.sleep(1.0)
    await c.console.send({"type": "pause"})
    await c.victim.wait_for(lambda m: m["type"] == "state" and m["status"] == "paused" and m["recording"] is False)
    await asyncio.sleep(2.0)
    await c.console.send({"type": "resume"})
    await c.victim.wait_for(lambda m: m["type"] == "state" and m["status"] == "live" and m["recording"] is True)
    await c.console.wait_media(audio=20, video=15)  # recorded again: the pause's gap has an end
    since = len(c.console.messages)
    await c.victim.drop()  # the phone loses its connection...
    await eventually(lambda: [m for m in c.console.messages[since:] if m["type"] == "state" and not any(
        p["role"] == "victim" and p["connected"] for p in m["participants"])], what="the server seeing the phone go")
    await asyncio.sleep(1.6)  # ...for the length of the disconnection's gap...
    again = call.client(c.phone.session, c.victim.ws_url)
    await again.join()  # ...and it comes back on the same link
    await c.console.wait_media(audio=20, video=30)  # the rejoined phone's media reaches the officer
    assert (await c.officer.post(f"/api/consultations/{c.id}/close")).status == 200

    listed = (await (await c.officer.get(f"/api/consultations/{c.id}/recordings")).json())["recordings"]
    victim = [r for r in listed if r["participant"] == "victim"]
    assert len(victim) == 1, "a rejoin continues the same recording"
    detail = await (await c.officer.get(f"/api/consultations/{c.id}/recordings/{victim[0]['id']}")).json()
    gaps = [e for e in detail["entries"] if e["type"] == "gap"]
    assert [g["reason"] for g in gaps] == ["pause", "disconnected"]
    assert [e["type"] for e in detail["entries"]][-1] == "end"

    # In the joined file the pause is a true gap in time, not a jump cut.
    response = await c.officer.get(f"/api/consultations/{c.id}/recordings/{victim[0]['id']}/playback")
    with av.open(io.BytesIO(await response.read())) as container:
        times = [float(p.pts * p.time_base) for p in container.demux(video=0) if p.pts is not None]
    jumps = sorted(b - a for a, b in zip(times, times[1:]))
    # The 2 s pause and the 1.6 s reconnection (less what it takes media to stop and start).
    assert jumps[-1] > 1.4 and jumps[-2] > 1.0
    # Audio and video stay together: the streams end within half a second of each other.
    with av.open(io.BytesIO(await (await c.officer.get(
            f"/api/consultations/{c.id}/recordings/{victim[0]['id']}/playback")).read())) as container:
        ends = {}
        for packet in container.demux():
            if packet.pts is not None:
                ends[packet.stream.type] = float(packet.pts * packet.time_base)
    assert abs(ends["audio"] - ends["video"]) < 0.5


def synthetic_frames(seconds: float):
    """Alternating Opus and VP8 frames with arrival times, as the bridge would pass them."""
    video, audio = vp8_clip(320, 240), opus_clip()
    t = 1000.0
    v = a = 0
    out = []
    while v * video.interval < seconds:
        while a * audio.interval <= v * video.interval:
            data, _ = audio.frames[a % len(audio.frames)]
            out.append(("audio", EncodedFrame(data, a * 960, TIME_BASE["audio"], True, t + a * audio.interval)))
            a += 1
        data, key = video.frames[v % len(video.frames)]
        out.append(("video", EncodedFrame(data, v * 3000, TIME_BASE["video"], key, t + v * video.interval)))
        v += 1
    return out


async def test_a_stalled_disk_costs_counted_drops_and_a_gap_never_memory(tmp_path, monkeypatch):
    """The writer thread blocks (a disk that stopped answering): the queue stays at its
    bound, frames are counted as dropped, and a writer_stall gap names how many."""
    stalled = threading.Event()
    release = threading.Event()
    real_write = recorder_module.SegmentWriter.write

    def slow_write(self, item):
        if not release.is_set():
            stalled.set()
            release.wait()
        real_write(self, item)

    monkeypatch.setattr(recorder_module.SegmentWriter, "write", slow_write)
    events = []

    async def sink(event):
        events.append(event)

    rec = Recorder("r1", tmp_path / "spool", sink, lambda: None, segment_seconds=2.0, max_queued=100)
    frames = synthetic_frames(8.0)
    half = len(frames) // 2
    largest = 0
    for kind, frame in frames[:half]:
        rec.on_frame(kind, frame, "leg")
        largest = max(largest, rec.items.qsize())
    assert stalled.wait(5)
    assert largest <= 100 and rec.dropped > half - 110  # bounded: the rest were counted, not queued
    dropped = rec.dropped
    release.set()
    while rec.items.qsize():  # the disk catches up
        await asyncio.sleep(0.01)
    for kind, frame in frames[half:]:  # now at the pace the disk takes
        rec.on_frame(kind, frame, "leg")
        while rec.items.qsize() > 50:
            await asyncio.sleep(0.002)
    await rec.on_close("closed")
    stall = [e for e in events if isinstance(e, Gap)]
    assert len(stall) == 1 and stall[0].reason == "writer_stall" and stall[0].dropped_packets == dropped
    assert isinstance(events[-1], End)
    segments = [e for e in events if isinstance(e, SegmentClosed)]
    assert segments and all(e.path.exists() for e in segments)
    # Video after the stall starts again at a keyframe, so every segment after it decodes.
    after = [e for e in segments if e.start_s >= stall[0].end_s]
    assert after and after[0].keyframe_start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "EVR_RECORDING_SEGMENT_SECONDS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "evr", "serve", "--data", str(data), "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(data / f"server-{port}.log", "ab"),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError((data / f"server-{port}.log").read_text())
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not start")


async def login(session: aiohttp.ClientSession, base: str) -> str:
    async with session.post(f"{base}/api/login", json={"username": "alice", "password": PASSWORD}) as r:
        assert r.status == 200
        return (await r.json())["csrf_token"]


async def test_kill_9_mid_call_loses_at_most_the_last_segment(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run([sys.executable, "-m", "evr", "user", "add", "alice", "--role", "officer", "--data", str(data)],
                   input=PASSWORD + "\n", text=True, check=True, capture_output=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(data, port)
    clients: list[CallClient] = []
    try:
        # unsafe=True: keep cookies from an IP address host (127.0.0.1).
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as officer, \
                aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as phone:
            csrf = await login(officer, base)
            body = {"cad_ref": "CAD-9", "victim": {"phone": "07700 900123"}, "eligibility": ELIGIBLE}
            async with officer.post(f"{base}/api/consultations", json=body, headers={"X-CSRF-Token": csrf}) as r:
                created = await r.json()
                assert r.status == 201, created
            path = link_path(created["join_url"])
            async with phone.get(base + path) as r:
                assert r.status == 200
            victim = CallClient(phone, f"{base}{path}/ws")
            console = CallClient(officer, f"{base.replace('http', 'ws')}/api/consultations/{created['id']}/ws")
            clients += [victim, console]
            await victim.join()
            await console.join()
            await console.wait_media(audio=20, video=15)
            started = time.monotonic()
            await asyncio.sleep(4.5)
            server.send_signal(signal.SIGKILL)
            media_before_kill = time.monotonic() - started
            server.wait(timeout=10)
            for client in clients:
                await client.drop()

            server = start_server(data, port)
            csrf = await login(officer, base)
            url = f"{base}/api/consultations/{created['id']}/recordings"
            async with officer.get(url) as r:
                recordings = (await r.json())["recordings"]
            assert sorted(r["participant"] for r in recordings) == ["officer", "victim"]
            for recording in recordings:
                assert recording["status"] == "terminated"
                # Everything up to the kill is there but (at most) the segment being written.
                assert recording["duration_s"] >= media_before_kill - 1.0 - 0.5
                async with officer.get(f"{url}/{recording['id']}") as r:
                    entries = (await r.json())["entries"]
                assert entries[-1]["type"] == "end" and entries[-1]["reason"] == "server_restart"
                verified = subprocess.run(
                    [sys.executable, "-m", "evr", "recording", "verify", "--data", str(data), recording["id"]],
                    capture_output=True, text=True)
                assert verified.returncode == 0, verified.stdout + verified.stderr
                async with officer.get(f"{url}/{recording['id']}/export", params={"reason": "crash review"}) as r:
                    archive = zipfile.ZipFile(io.BytesIO(await r.read()))
                manifest = json.loads(archive.read("manifest.json"))
                assert manifest["recording"]["status"] == "terminated"
                for name in archive.namelist():
                    if name.endswith(".webm"):  # every stored segment, the salvaged one too, plays
                        with av.open(io.BytesIO(archive.read(name))) as segment:
                            assert sum(1 for _ in segment.demux()) > 0
    finally:
        for client in clients:
            await client.leave()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def test_a_torn_segment_is_salvaged_up_to_where_it_was_cut(tmp_path):
    """What ``kill -9`` leaves of the segment being written still yields its packets."""
    from evr.recording.service import _salvage

    reported = []
    writer = recorder_module.SegmentWriter(tmp_path, reported.append)
    for kind, frame in synthetic_frames(3.0):
        ms = int((frame.arrival - 1000.0) * 1000)
        writer.write(recorder_module.Packet(kind, frame.data, ms, frame.is_keyframe))
    writer.close_segment()
    whole = reported[0].path
    torn = tmp_path / "seg-000002.webm"
    torn.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    salvaged = _salvage(torn, 2)
    assert salvaged is not None and salvaged.recovered
    assert 0 < salvaged.packets < reported[0].packets
    assert 1.0 < salvaged.end_s < 3.0
    (tmp_path / "empty.webm").write_bytes(whole.read_bytes()[:200])  # the header only
    assert _salvage(tmp_path / "empty.webm", 3) is None


async def test_a_quick_rejoin_restarts_video_at_a_keyframe(tmp_path):
    """A new connection with no gap in time still starts its video at a keyframe:
    frames that depend on the old connection's pictures are never muxed."""
    events = []

    async def sink(event):
        events.append(event)

    rec = Recorder("r2", tmp_path / "spool", sink, lambda: None, segment_seconds=10.0)
    queued = []
    real_put = rec._put

    def spy(item):
        queued.append(item)
        return real_put(item)

    rec._put = spy
    frames = synthetic_frames(2.0)  # a keyframe each second
    for kind, frame in frames:
        if frame.arrival < 1000.5:
            rec.on_frame(kind, frame, "first connection")
    before = len(queued)
    for kind, frame in frames:
        if frame.arrival >= 1000.5:  # mid-way between keyframes, no pause in arrivals
            rec.on_frame(kind, frame, "second connection")
    video = [p for p in queued[before:] if isinstance(p, recorder_module.Packet) and p.kind == "video"]
    assert video and video[0].keyframe
    assert not any(isinstance(p, Gap) for p in queued)
    await rec.on_close("closed")
