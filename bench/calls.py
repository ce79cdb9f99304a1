#!/usr/bin/env python3
"""Benchmark: N concurrent 1:1 calls through EVR, and a stock transcoding relay to compare.

    python bench/calls.py                      # 10 calls, 15 s window, then 1 transcoded call
    python bench/calls.py --calls 2 --seconds 5
    python bench/calls.py --skip-transcoding
    python bench/calls.py --skip-recording-comparison
    python bench/calls.py --participants 3     # also N 3-person calls: CPU per participant-pair

What it does:

1. Starts ``evr serve`` as a subprocess on a temporary SQLite data directory, adds an
   officer, logs in and creates N consultations.
2. Runs the 2N aiortc clients (:class:`evr.client.CallClient`) in separate worker
   processes, so their CPU does not count against the server. Every client sends a
   pre-encoded 640x480 VP8 clip at about 1 Mbit/s plus Opus (no encoder runs) and
   records what arrives.
3. After a warm-up, measures the server process's CPU time (all its threads) over a
   fixed window: share of one core, and per call. Counts every frame each client's
   source sent in the window and checks, frame by frame, that the far client got it
   (within a drain period after the window, during which the senders keep sending:
   aiortc's jitter buffer only releases a frame when the next one starts).
4. Runs the same calls again through a second ``evr serve`` with recording switched
   off (``EVR_RECORDING=false``), and prints what recording costs per recorded
   participant (every participant of every call is recorded).
5. With ``--participants P`` (3 to 6), runs the same number of calls again (steps 1 to
   4) with P participants each: the victim, the officer and P - 2 guests (an
   interpreter first), each invited and claiming their own link as a guest's browser
   does. Every participant's media goes to every other (the bridge's renegotiation),
   and every directed stream is checked frame by frame like a 1:1 call's. Prints the
   server CPU per participant-pair beside the 1:1 figure of the same run, and their
   ratio.
6. Does the same against the stock aiortc approach (decode every incoming frame and
   re-encode it for the other side), run by this file as a second server
   (``--transcoding-server PORT``) that never imports ``evr``, with fewer calls
   (it saturates a 2-core machine quickly), and prints how much cheaper EVR is.

Targets (from the issues): server CPU per 1:1 call <= 6 % of one core; >= 8x cheaper
than the transcoding relay in the same run; no frame lost on loopback with 10 calls;
recording adds <= 1 % of one core per recorded participant; in calls of more than two,
server CPU per participant-pair <= 1.2x the 1:1 figure.

A participant-pair is two participants of one call, so a call of P people has
P(P-1)/2 pairs and P(P-1) directed streams (one participant's audio and video relayed
to one other); a 1:1 call is one pair, two directed streams. CPU per pair is the
server's CPU divided by the pairs of all calls: for 1:1 calls, the CPU per call. The
ratio compares the relay's cost as the per-call target does: with recording off when
that phase ran (recording costs per participant, not per pair: it would flatter the
larger calls, which record fewer participants per pair).
The script exits 0 whether or not the targets are met; the PASS/FAIL lines say.

The VP8 clip is encoded once by this script before anything else runs and handed to
the clients.
``EVR_BENCH_DEBUG=1`` prints every direction's figures.

Frame matching: a receiver sees RTP timestamps that differ from the sender's by an
unknown constant per direction (two random timestamp origins and the relay's
rebasing). The constant is found by matching frame contents (each clip frame is
distinct) against the sender's log, so every frame of the window is accounted for
individually and in-flight frames at the window edges are not miscounted.
"""

from __future__ import annotations

# Only the standard library at module level: ``--transcoding-server`` must run the
# stock aiortc receive path, so nothing may import ``evr`` (its passthrough hook) there.
import argparse
import asyncio
import bisect
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Optional

PASSWORD = "bench-password-123"
USERNAME = "bench"
ELIGIBLE = {"adult_or_carer_present": True, "offender_absent": True, "safe_location": True, "consent": True}
VIDEO_SIZE = (640, 480)
KINDS = ("audio", "video")
STEP = {"audio": 960, "video": 3000}  # RTP timestamp increment per frame (48 kHz / 20 ms, 90 kHz / 30 fps)
MOD32 = 1 << 32

TARGET_PER_CALL = 6.0  # % of one core
TARGET_RATIO = 8.0
TARGET_LOSS_CALLS = 10
TARGET_RECORDING = 1.0  # % of one core per recorded participant
TARGET_PAIR_RATIO = 1.2  # CPU per participant-pair in larger calls / in 1:1 calls
#: Who joins a call beyond the victim and the officer, in order (evr.guests.GUEST_ROLES).
GUEST_ROLES = ("interpreter", "carer", "appropriate_adult", "support_worker")


# ---------------------------------------------------------------------------
# helpers (main process)
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def log_problems(path: Path) -> list[str]:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in text if " WARNING " in line or " ERROR " in line or "Traceback" in line]


def stop_process(proc: Optional[subprocess.Popen]) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(timeout=8)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


async def wait_healthy(http: Any, base: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0,
                       path: str = "/healthz") -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            async with http.get(base + path) as response:
                if response.status == 200:
                    return
        except (OSError, aiohttp.ClientError):
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"server did not become healthy in {timeout:.0f} s:\n{log_tail(log)}")


def cpu_snapshot(pid: int) -> tuple[float, dict[int, float]]:
    """CPU seconds (user + system) of a process, all its threads and live children."""
    import psutil

    proc = psutil.Process(pid)
    with proc.oneshot():
        times = proc.cpu_times()
        threads = {t.id: t.user_time + t.system_time for t in proc.threads()}
    total = times.user + times.system
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total, threads


def system_busy() -> tuple[float, float]:
    import psutil

    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle, sum(t)


async def recv_reply(conn: Any, what: str, timeout: float) -> Any:
    """The next message from a worker (run in a thread: Connection.recv blocks)."""

    def get() -> Any:
        if not conn.poll(timeout):
            raise TimeoutError(f"no {what!r} from a client worker within {timeout:.0f} s")
        return conn.recv()

    message = await asyncio.get_running_loop().run_in_executor(None, get)
    if message[0] == "error":
        raise RuntimeError(f"client worker failed:\n{message[1]}")
    if message[0] != what:
        raise RuntimeError(f"client worker answered {message[0]!r}, expected {what!r}")
    return message[1]


# ---------------------------------------------------------------------------
# client workers (separate processes)
# ---------------------------------------------------------------------------


def worker_entry(conn: Any, spec: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    try:
        asyncio.run(spec.get("main", worker_main)(conn, spec))
    except Exception:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass


def timed_source() -> Any:
    """The clients' source track class (imported in a worker: it is EVR's
    ``EncodedSourceTrack``), which logs, per frame index, when it was handed to the
    sender and a hash of its bytes."""
    from evr.media.sources import EncodedSourceTrack

    class TimedSource(EncodedSourceTrack):
        def __init__(self, clip: Any) -> None:
            super().__init__(clip)
            self.times: list[float] = []
            self.hashes: list[int] = []
            self.mark = self.end = 0  # frame indices at the window's start and end
            self.requests_at_mark = self.requests_at_end = 0

        async def recv(self) -> Any:  # type: ignore[override]
            frame = await super().recv()
            self.times.append(time.monotonic())
            self.hashes.append(hash(frame.data))
            return frame

    return TimedSource


async def worker_main(conn: Any, spec: dict[str, Any]) -> None:
    import aiohttp

    import evr.client as client_module

    TimedSource = timed_source()
    from evr.media.sources import opus_clip

    clips = {"audio": opus_clip(), "video": spec["video_clip"]}

    class BenchClient(client_module.CallClient):
        """Logs every received frame per mid: (RTP timestamp, arrival, hash, size, keyframe)."""

        def __init__(self, label: str, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.label = label  # the participant's role in the call, for the report
            self.rx: dict[str, list[tuple[int, float, int, int, bool]]] = {}

        def _logged(self, mid: str, count: Any) -> Any:
            rx = self.rx.setdefault(mid, [])

            def on_frame(frame: Any) -> None:
                count(frame)
                rx.append((frame.pts, time.monotonic(), hash(frame.data), len(frame.data), frame.is_keyframe))

            return on_frame

        def _audio_counter(self, mid: str) -> Any:
            return self._logged(mid, super()._audio_counter(mid))

        def _video_counter(self, mid: str) -> Any:
            return self._logged(mid, super()._video_counter(mid))

        def own_id(self) -> str:
            return next(p["id"] for p in self.state()["participants"] if p.get("you"))

        def mid_from(self, sender: "BenchClient", kind: str) -> Optional[str]:
            """The mid on which ``sender``'s ``kind`` arrives here: as EVR's ``state``
            says, or (the stock relay, one transceiver of each kind) by kind."""
            if not self.state():
                assert self.pc is not None
                return next(t.mid for t in self.pc.getTransceivers() if t.kind == kind)
            entry = next((p for p in self.state()["participants"] if p["id"] == sender.own_id()), {})
            return (entry.get("mids") or {}).get(kind)

        async def media_from_all(self, others: int) -> None:
            """Until media arrives from each of the ``others`` other participants."""
            if mode != "evr":
                await self.wait_media(audio=25, video=15, timeout=30)
                return

            def everyone_on_mids(m: dict[str, Any]) -> bool:
                return m.get("type") == "state" and sum(
                    1 for p in m.get("participants", []) if not p.get("you")
                    and set(KINDS) <= set(p.get("mids") or {})) == others

            state = await self.wait_for(everyone_on_mids, timeout=30)
            for p in state["participants"]:
                if not p.get("you"):
                    await self.wait_from(p["id"], audio=25, video=15, timeout=30)

    loop = asyncio.get_running_loop()

    async def command() -> tuple[str, Any]:
        def get() -> Any:
            if not conn.poll(900):
                raise TimeoutError("no command from the parent for 15 minutes")
            return conn.recv()

        return await loop.run_in_executor(None, get)

    base = spec["base"]
    mode = spec["mode"]
    kwargs = dict(clips=clips, source_factory=TimedSource)
    connector = lambda: aiohttp.TCPConnector(limit=0)  # noqa: E731
    # The server is on 127.0.0.1: the cookie jar must accept cookies from an IP address.
    victim_http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), connector=connector())
    officer_http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), connector=connector())
    guest_http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), connector=connector())
    calls: list[list[Any]] = []  # each call's clients: victim, officer, guests
    try:
        if mode == "evr":
            async with officer_http.post(base + "/api/login", json={"username": spec["username"],
                                                                    "password": spec["password"]}) as r:
                if r.status != 200:
                    raise RuntimeError(f"login failed: {r.status} {await r.text()}")

        gate = asyncio.Semaphore(4)

        async def link_client(http: Any, label: str, path: str) -> Any:
            """A victim's or guest's browser: opens the link's page; the client claims it."""
            async with http.get(base + path) as r:
                if r.status != 200:
                    raise RuntimeError(f"{label} link answered {r.status}")
            return BenchClient(label, http, base + path + "/ws", **kwargs)

        async def open_call(call: dict[str, Any]) -> list[Any]:
            async with gate:
                if mode == "evr":
                    members = [await link_client(victim_http, "victim", call["join_path"]),
                               BenchClient("officer", officer_http, f"{base}/api/consultations/{call['id']}/ws",
                                           **kwargs)]
                    for role, path in call.get("guests", []):
                        members.append(await link_client(guest_http, role, path))
                    calls.append(members)
                    for member in members:
                        await member.join()
                else:  # the transcoding relay answers once both sides have offered
                    members = [BenchClient("victim", victim_http, f"{base}/room/{call['id']}/a", **kwargs),
                               BenchClient("officer", officer_http, f"{base}/room/{call['id']}/b", **kwargs)]
                    calls.append(members)
                    await asyncio.gather(*(m.join(timeout=30) for m in members))
                return members

        opened = await asyncio.gather(*(open_call(c) for c in spec["calls"]))
        await asyncio.gather(*(c.media_from_all(len(members) - 1) for members in opened for c in members))
        conn.send(("joined", len(opened)))

        t_mark = t_end = 0.0
        while True:
            cmd, _arg = await command()
            if cmd in ("mark", "end"):
                now = time.monotonic()
                if cmd == "mark":
                    t_mark = now
                else:
                    t_end = now
                for members in opened:
                    for c in members:
                        for s in c.sources.values():
                            setattr(s, cmd, s.sent)
                            setattr(s, f"requests_at_{cmd}", s.keyframe_requests)
                conn.send((cmd, None))
            elif cmd == "report":
                report = []
                for call, members in zip(spec["calls"], opened, strict=True):
                    for sender in members:
                        for receiver in members:
                            if receiver is sender:
                                continue
                            for kind in KINDS:
                                rx = receiver.rx.get(receiver.mid_from(sender, kind) or "", [])
                                stats = direction_stats(sender.sources[kind], rx, kind, t_mark, t_end)
                                stats.update(call=call["id"], direction=f"{sender.label}->{receiver.label}",
                                             kind=kind)
                                report.append(stats)
                conn.send(("report", report))
            elif cmd == "leave":
                break
    finally:
        await asyncio.gather(*(c.leave() for members in calls for c in members), return_exceptions=True)
        for http in (victim_http, officer_http, guest_http):
            await http.close()
    conn.send(("leave", None))


def direction_stats(source: Any, rx: list[tuple[int, float, int, int, bool]], kind: str,
                    t_mark: float, t_end: float, offset: Optional[int] = None) -> dict[str, Any]:
    """What one source sent in the window [mark, end) and what of it the far end got
    (``offset``: :func:`map_offset`'s, when the caller found it already)."""
    first, last = source.mark, source.end
    in_window = [r for r in rx if t_mark <= r[1] < t_end]
    stats: dict[str, Any] = {
        "sent": last - first,
        "received_in_window": len(in_window),  # by arrival time (a rough count)
        "bytes_in_window": sum(r[3] for r in in_window),
        "keyframes_in_window": sum(1 for r in in_window if r[4]) if kind == "video" else 0,
        "keyframe_requests": source.requests_at_end - source.requests_at_mark,
        "window": t_end - t_mark,
        "delivered": None,  # by frame identity (exact), when the stream maps
        "latency": [],
    }
    if offset is None:
        offset = map_offset(source, rx, kind)
    if offset is None:
        return stats
    step = STEP[kind]
    got: dict[int, float] = {}
    for ts, arrival, _h, _n, _k in rx:
        d = (ts - offset) % MOD32
        if d % step == 0:
            got.setdefault(d // step, arrival)
    delivered = [k for k in range(first, last) if k in got]
    stats["delivered"] = len(delivered)
    stats["missing"] = [k - first for k in range(first, last) if k not in got][:20]
    stats["latency"] = [got[k] - source.times[k] for k in delivered]
    return stats


def map_offset(source: Any, rx: list[tuple[int, float, int, int, bool]], kind: str) -> Optional[int]:
    """The constant that turns a received RTP timestamp into the sender's frame index.

    Candidates come from the last received frame and the frames sent shortly before it
    arrived; the one under which received contents match the sender's log wins. None
    when contents do not match (a transcoding relay re-encodes them)."""
    if not rx or not source.times:
        return None
    step = STEP[kind]
    ts_last, arrival_last, _h, _n, _k = rx[-1]
    newest = bisect.bisect_right(source.times, arrival_last) - 1
    sample = rx[-300:]
    best: tuple[int, Optional[int]] = (-1, None)
    for k in range(max(0, newest - 40), newest + 1):
        offset = (ts_last - k * step) % MOD32
        score = 0
        for ts, _a, h, _n, _k in sample:
            d = (ts - offset) % MOD32
            if d % step == 0 and d // step < len(source.hashes) and source.hashes[d // step] == h:
                score += 1
        if score > best[0]:
            best = (score, offset)
    if best[0] < 0.9 * len(sample):
        return None
    return best[1]


# ---------------------------------------------------------------------------
# one measured phase: workers join, warm up, window, drain, report
# ---------------------------------------------------------------------------


async def run_phase(name: str, server_pid: int, mode: str, base: str, calls: list[dict[str, Any]], args: Any,
                    seconds: float, video_clip: Any, before_mark: Any = None, after_end: Any = None,
                    worker: Any = None) -> dict[str, Any]:
    import multiprocessing

    import psutil

    ctx = multiprocessing.get_context("spawn")
    nworkers = max(1, min(args.workers, len(calls)))
    shares = [calls[i::nworkers] for i in range(nworkers)]
    workers = []
    try:
        for share in shares:
            parent, child = ctx.Pipe()
            spec = {"base": base, "mode": mode, "calls": share, "username": USERNAME, "password": PASSWORD,
                    "video_size": VIDEO_SIZE, "vp8_target": args.vp8_target, "video_clip": video_clip}
            if worker is not None:  # another client (a module-level coroutine function, as worker_main)
                spec["main"] = worker
            proc = ctx.Process(target=worker_entry, args=(child, spec), daemon=True, name=f"bench-{name}")
            proc.start()
            child.close()
            workers.append((proc, parent))

        async def all_(what: str, timeout: float) -> list[Any]:
            return await asyncio.gather(*(recv_reply(conn, what, timeout) for _p, conn in workers))

        def send_all(cmd: str) -> None:
            for _p, conn in workers:
                conn.send((cmd, None))

        print(f"  {name}: {len(calls)} call(s) joining from {nworkers} client worker(s)...", flush=True)
        await all_("joined", 120)
        print(f"  {name}: media flowing; warming up {args.warmup:.0f} s, then measuring {seconds:.0f} s", flush=True)
        await asyncio.sleep(args.warmup)
        api_before = await before_mark() if before_mark else None

        worker_procs = [psutil.Process(p.pid) for p, _c in workers]
        cpu0, threads0 = cpu_snapshot(server_pid)
        clients0 = sum(sum(w.cpu_times()[:2]) for w in worker_procs)
        busy0, all0 = system_busy()
        t0 = time.monotonic()
        send_all("mark")
        await all_("mark", 30)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        cpu1, threads1 = cpu_snapshot(server_pid)
        clients1 = sum(sum(w.cpu_times()[:2]) for w in worker_procs)
        busy1, all1 = system_busy()
        t1 = time.monotonic()
        send_all("end")
        await all_("end", 30)
        api_after = await after_end() if after_end else None
        await asyncio.sleep(args.drain)  # the senders keep going: the window's last frames get out
        send_all("report")
        reports = [r for rs in await all_("report", 60) for r in rs]
        if os.environ.get("EVR_BENCH_DEBUG"):  # every direction's figures
            for r in reports:
                print({k: v for k, v in r.items() if k != "latency"}, file=sys.stderr)
        send_all("leave")
        await all_("leave", 60)
        for proc, _conn in workers:
            proc.join(10)
    finally:
        for proc, conn in workers:
            if proc.is_alive():
                proc.terminate()
                proc.join(3)
            if proc.is_alive():
                proc.kill()
            conn.close()

    wall = t1 - t0
    main_thread = threads1.get(server_pid, 0.0) - threads0.get(server_pid, 0.0)
    return {
        "calls": len(calls),
        "wall": wall,
        "cpu": (cpu1 - cpu0) / wall * 100,  # % of one core
        "main_thread": main_thread / wall * 100,
        "threads": len(threads1),
        "clients_cpu": (clients1 - clients0) / wall * 100,
        "machine_busy": (busy1 - busy0) / max(1e-9, all1 - all0) * 100,  # % of all cores
        "machine_busy_cores": (busy1 - busy0) / wall * 100,  # % of one core
        "reports": reports,
        "api": (api_before, api_after),
    }


def frame_totals(reports: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    rows = [r for r in reports if r["kind"] == kind]
    exact = [r for r in rows if r["delivered"] is not None]
    sent = sum(r["sent"] for r in rows)
    return {
        "sent": sent,
        "exact": len(exact) == len(rows),
        "delivered": sum(r["delivered"] for r in exact) + sum(min(r["sent"], r["received_in_window"]) for r in rows
                                                              if r["delivered"] is None),
        "received_in_window": sum(r["received_in_window"] for r in rows),
        "bitrate": statistics.mean(r["bytes_in_window"] * 8 / r["window"] for r in rows) if rows else 0.0,
        "latency": sorted(x for r in exact for x in r["latency"]),
        "unmapped": len(rows) - len(exact),
        "keyframes": sum(r["keyframes_in_window"] for r in rows),
        "keyframe_requests": sum(r["keyframe_requests"] for r in rows),
        "directions": len(rows),
        "lossy": [r for r in exact if r["delivered"] < r["sent"]],
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


# ---------------------------------------------------------------------------
# the stock transcoding relay (a separate process; never imports evr)
# ---------------------------------------------------------------------------


def run_transcoding_server(port: int) -> None:
    """Stock aiortc: every received frame is decoded, and re-encoded for the other side.

    ``/room/{name}/{side}``: each of two sides sends ``{"type": "offer"}``; once both have,
    each gets ``{"type": "answer"}`` whose sending tracks are the other side's remote
    tracks, which aiortc decodes (receiver thread) and the sender re-encodes."""
    assert not any(m == "evr" or m.startswith("evr.") for m in sys.modules), "evr must not be imported here"
    import logging

    from aiohttp import WSMsgType, web
    from aiortc import RTCPeerConnection, RTCSessionDescription

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    offers: dict[str, dict[str, tuple[web.WebSocketResponse, str]]] = {}
    room_pcs: dict[str, list[RTCPeerConnection]] = {}

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "stock": "evr" not in sys.modules})

    async def pair(name: str) -> None:
        (ws_a, sdp_a), (ws_b, sdp_b) = offers[name].values()
        pc_a, pc_b = RTCPeerConnection(), RTCPeerConnection()
        room_pcs[name] = [pc_a, pc_b]
        await pc_a.setRemoteDescription(RTCSessionDescription(sdp=sdp_a, type="offer"))
        await pc_b.setRemoteDescription(RTCSessionDescription(sdp=sdp_b, type="offer"))

        def remote(pc: RTCPeerConnection, kind: str) -> Any:
            return next(t.receiver.track for t in pc.getTransceivers() if t.kind == kind)

        for kind in KINDS:
            pc_a.addTrack(remote(pc_b, kind))
            pc_b.addTrack(remote(pc_a, kind))
        for pc, ws in ((pc_a, ws_a), (pc_b, ws_b)):
            await pc.setLocalDescription(await pc.createAnswer())
            await ws.send_json({"type": "answer", "sdp": pc.localDescription.sdp})

    async def room_socket(request: web.Request) -> web.WebSocketResponse:
        name, side = request.match_info["name"], request.match_info["side"]
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await ws.send_json({"type": "config", "ice_servers": []})  # as EVR: the client waits for it
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                message = json.loads(msg.data)
                if message.get("type") == "offer":
                    offers.setdefault(name, {})[side] = (ws, message["sdp"])
                    if len(offers[name]) == 2:
                        await pair(name)
        finally:
            offers.pop(name, None)
            for pc in room_pcs.pop(name, []):
                await pc.close()
        return ws

    async def shutdown(_app: web.Application) -> None:
        pcs = [pc for pcs in room_pcs.values() for pc in pcs]
        room_pcs.clear()
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/room/{name}/{side}", room_socket)])
    app.on_shutdown.append(shutdown)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------


def choose_clip(target: int) -> Any:
    """The VP8 clip, encoded here once and handed to every client worker."""
    from evr.media.sources import vp8_clip

    return vp8_clip(*VIDEO_SIZE, bitrate=target)


def link_path(join_url: str) -> str:
    """``/j/<token>`` of a victim's or guest's link."""
    return "/j/" + join_url.rsplit("/j/", 1)[1]


def pairs_per_call(participants: int) -> int:
    """Participant-pairs in a call (each pair is two directed streams)."""
    return participants * (participants - 1) // 2


async def evr_phase(args: argparse.Namespace, tmp: Path, procs: list[subprocess.Popen], clip: Any,
                    recording: bool, participants: int = 2, serve_args: tuple[str, ...] = (),
                    worker: Any = None) -> tuple[dict[str, Any], list[str]]:
    """Run the calls (``participants`` people each) through a fresh ``evr serve``
    (recording on or off; ``serve_args`` added to its command line); its figures and
    log problems. ``worker``: what the client workers run (default :func:`worker_main`)."""
    import aiohttp

    name = "recording" if recording else "no-recording"
    if participants > 2:
        name = f"{participants}-person calls, {name}"
    slug = name.replace(", ", "-").replace(" ", "-")
    data = tmp / f"data-{slug}"
    evr_log = tmp / f"evr-{slug}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", EVR_RECORDING="true" if recording else "false")
    added = subprocess.run([sys.executable, "-m", "evr", "user", "add", USERNAME, "--role", "officer",
                            "--data", str(data)], input=PASSWORD + "\n", text=True, capture_output=True, env=env)
    if added.returncode != 0:
        raise RuntimeError(f"evr user add failed: {added.stderr or added.stdout}")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(evr_log, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "evr", "serve", "--data", str(data), "--port", str(port),
                                   *serve_args],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    procs.append(server)

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await wait_healthy(http, base, server, evr_log)
        async with http.post(base + "/api/login", json={"username": USERNAME, "password": PASSWORD}) as r:
            if r.status != 200:
                raise RuntimeError(f"login failed: {r.status} {await r.text()}")
            csrf = (await r.json())["csrf_token"]
        calls = []
        for i in range(args.calls):
            body = {"cad_ref": f"CAD-BENCH-{i + 1:04d}", "victim": {}, "eligibility": ELIGIBLE}
            async with http.post(base + "/api/consultations", json=body, headers={"X-CSRF-Token": csrf}) as r:
                if r.status != 201:
                    raise RuntimeError(f"creating a consultation failed: {r.status} {await r.text()}")
                created = await r.json()
            call = {"id": created["id"], "join_path": link_path(created["join_url"]), "guests": []}
            for role in GUEST_ROLES[:participants - 2]:
                async with http.post(f"{base}/api/consultations/{call['id']}/guests", headers={"X-CSRF-Token": csrf},
                                     json={"role": role, "name": f"Bench {role}"}) as r:
                    if r.status != 201:
                        raise RuntimeError(f"inviting a guest failed: {r.status} {await r.text()}")
                    call["guests"].append((role, link_path((await r.json())["join_url"])))
            calls.append(call)

        async def api_counters() -> dict[str, int]:
            totals: Counter[str] = Counter()
            for call in calls:
                async with http.get(f"{base}/api/consultations/{call['id']}") as r:
                    if r.status != 200:
                        raise RuntimeError(f"a consultation's detail failed: {r.status} {await r.text()}")
                    detail = await r.json()
                for p in detail["participants"]:
                    totals.update(p["media"])
            return dict(totals)

        result = await run_phase(f"passthrough, {name}", server.pid, "evr", base, calls, args, args.seconds, clip,
                                 before_mark=api_counters, after_end=api_counters, worker=worker)
        result.update(participants=participants, pairs=len(calls) * pairs_per_call(participants), recording=recording)
        if recording:
            segments = 0
            for call in calls:
                async with http.get(f"{base}/api/consultations/{call['id']}/recordings") as r:
                    segments += sum(x["segments"] for x in (await r.json())["recordings"])
            result["recorded_segments"] = segments
    stop_process(server)
    return result, log_problems(evr_log)


async def bench(args: argparse.Namespace, tmp: Path, procs: list[subprocess.Popen]) -> None:
    import aiohttp

    from evr.media.sources import opus_clip

    clip = choose_clip(args.vp8_target)
    audio = opus_clip()
    print(f"clip: {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} VP8 {clip.bitrate / 1e6:.2f} Mbit/s "
          f"(libvpx target {args.vp8_target / 1e3:.0f} kbit/s), Opus {audio.bitrate / 1e3:.0f} kbit/s", flush=True)

    results: dict[str, Any] = {}
    results["evr"], results["evr_log_problems"] = await evr_phase(args, tmp, procs, clip, recording=True)
    if not args.skip_recording_comparison:
        results["evr_off"], _ = await evr_phase(args, tmp, procs, clip, recording=False)
    if args.participants > 2:  # the same calls with more people, in the same run as the 1:1 figure
        results["multi"], results["multi_log_problems"] = await evr_phase(args, tmp, procs, clip, recording=True,
                                                                          participants=args.participants)
        if not args.skip_recording_comparison:
            results["multi_off"], _ = await evr_phase(args, tmp, procs, clip, recording=False,
                                                      participants=args.participants)
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    if not args.skip_transcoding:
        tport = free_port()
        tbase = f"http://127.0.0.1:{tport}"
        tlog = tmp / "transcoding.log"
        with open(tlog, "wb") as log:
            relay = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--transcoding-server", str(tport)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs.append(relay)
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, tbase, relay, tlog)
            async with http.get(tbase + "/healthz") as r:
                if not (await r.json())["stock"]:
                    raise RuntimeError("the transcoding relay imported evr")
        tcalls = [{"id": f"t{i + 1}"} for i in range(args.transcode_calls)]
        results["stock"] = await run_phase("transcoding", relay.pid, "stock", tbase, tcalls, args,
                                           args.transcode_seconds or args.seconds, clip)
        stop_process(relay)
        results["stock_log_problems"] = log_problems(tlog)

    summarize(args, clip.bitrate, results)


def summarize(args: argparse.Namespace, video_bitrate: float, results: dict[str, Any]) -> None:
    evr = results["evr"]
    # The relay's own cost (the per-call, transcoding and per-pair targets) is measured
    # with recording off when that phase ran; recording has its own target below.
    relay = results.get("evr_off", evr)
    relay_per_call = relay["cpu"] / relay["calls"]

    print()
    lost = print_passthrough(args, video_bitrate, evr, results.get("evr_log_problems"))

    ratio = None
    if "stock" in results:
        stock = results["stock"]
        t_per_call = stock["cpu"] / stock["calls"]
        ratio = t_per_call / relay_per_call if relay_per_call > 0 else float("inf")
        tv = frame_totals(stock["reports"], "video")
        ta = frame_totals(stock["reports"], "audio")
        print(f"transcoding relay ({stock['calls']} call{'s' if stock['calls'] != 1 else ''}): "
              f"{stock['cpu']:.1f} % of one core = {t_per_call:.1f} % per call -> passthrough "
              f"({relay_per_call:.2f} % per call{' without recording' if relay is not evr else ''}) "
              f"is {ratio:.1f}x cheaper")
        print(f"  (event-loop thread {stock['main_thread']:.1f} %, {stock['threads'] - 1} other threads "
              f"{max(0.0, stock['cpu'] - stock['main_thread']):.1f} %; "
              f"received {tv['received_in_window']}/{tv['sent']} video "
              f"frames, {ta['received_in_window']}/{ta['sent']} audio in the window; re-encoded video arrives at "
              f"{tv['bitrate'] / 1e6:.2f} Mbit/s; machine busy {stock['machine_busy']:.0f} %)")
        if results.get("stock_log_problems"):
            print(f"  relay log: {len(results['stock_log_problems'])} warning/error line(s)")

    parts = [f"relay per call <= {TARGET_PER_CALL:g} %: {verdict(relay_per_call <= TARGET_PER_CALL)}"]
    if ratio is not None:
        parts.append(f">= {TARGET_RATIO:g}x cheaper: {verdict(ratio >= TARGET_RATIO)}")
    else:
        parts.append(f">= {TARGET_RATIO:g}x cheaper: not measured (--skip-transcoding)")
    if "evr_off" in results:
        cost = print_recording(evr, results["evr_off"])
        parts.append(f"recording <= {TARGET_RECORDING:g} % per participant: {verdict(cost <= TARGET_RECORDING)}")

    if "multi" in results:
        multi = results["multi"]
        people = multi["participants"]
        print()
        lost += print_passthrough(args, video_bitrate, multi, results.get("multi_log_problems"))
        if "multi_off" in results:
            print_recording(multi, results["multi_off"])
        print(f"server CPU per participant-pair (a pair: two participants of a call, two directed streams, each "
              f"one's audio and video relayed to the other; a 1:1 call is 1 pair, a {people}-person call "
              f"{pairs_per_call(people)}):")
        ratios = {}
        for off, what in ((True, "recording off"), (False, "recording every participant")):
            one, many = results.get("evr_off" if off else "evr"), results.get("multi_off" if off else "multi")
            if one is None or many is None:
                continue
            one_pair, many_pair = one["cpu"] / one["pairs"], many["cpu"] / many["pairs"]
            ratios[off] = many_pair / one_pair if one_pair > 0 else float("inf")
            print(f"  {what}: 1:1 {one_pair:.2f} % of one core per pair ({one['pairs']} pairs), {people}-person "
                  f"{many_pair:.2f} % per pair ({many['pairs']} pairs) = "
                  f"{many_pair / 2:.2f} % per directed stream -> ratio {ratios[off]:.2f}")
        off = True in ratios
        parts.append(f"per pair in {people}-person calls <= {TARGET_PAIR_RATIO:g}x 1:1 "
                     f"({'recording off' if off else 'recording on'}): {verdict(ratios[off] <= TARGET_PAIR_RATIO)}")

    n = evr["calls"]
    loss = f"no frame lost: {verdict(lost == 0)}"
    if n != TARGET_LOSS_CALLS:
        loss += f" (with {n} calls; the target is for {TARGET_LOSS_CALLS})"
    parts.append(loss)
    print("targets: " + "; ".join(parts))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_passthrough(args: argparse.Namespace, video_bitrate: float, evr: dict[str, Any],
                      log_problems: Optional[list[str]]) -> int:
    """One EVR phase's figures (CPU, frames, latency, counters, load); the frames lost."""
    n, people = evr["calls"], evr["participants"]
    per_call = evr["cpu"] / n
    video = frame_totals(evr["reports"], "video")
    audio = frame_totals(evr["reports"], "audio")
    lost = (video["sent"] - video["delivered"]) + (audio["sent"] - audio["delivered"])
    exact = video["exact"] and audio["exact"]

    size = "" if people == 2 else (f" of {people} participants ({evr['pairs']} participant-pairs, "
                                   f"{2 * evr['pairs']} directed streams)")
    print(f"calls: {n}{size}  window: {evr['wall']:.1f} s  video: {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} VP8 "
          f"{video_bitrate / 1e6:.2f} Mbit/s + Opus")
    print(f"passthrough server CPU, recording {'every participant' if evr['recording'] else 'off'}: "
          f"{evr['cpu']:.1f} % of one core = {per_call:.2f} % per call  "
          f"(event-loop thread {evr['main_thread']:.1f} %, {evr['threads'] - 1} other threads "
          f"{max(0.0, evr['cpu'] - evr['main_thread']):.1f} %)")
    print(f"frames delivered: {video['delivered']}/{video['sent']} video, {audio['delivered']}/{audio['sent']} audio "
          f"({lost} lost{'' if exact else '; some streams could not be matched frame by frame: counted by arrival'})")
    print(f"  per direction: video arrives at {video['bitrate'] / 1e6:.2f} Mbit/s; one-way latency through the "
          f"server video p50 {pct(video['latency'], .5) * 1e3:.0f} ms p99 {pct(video['latency'], .99) * 1e3:.0f} ms, "
          f"audio p50 {pct(audio['latency'], .5) * 1e3:.0f} ms p99 {pct(audio['latency'], .99) * 1e3:.0f} ms")
    print(f"  keyframes: {video['keyframes']} arrived in the window over {video['directions']} directions "
          f"(the clip has one a second: {round(evr['wall']) * video['directions']}); "
          f"{video['keyframe_requests']} keyframe requests reached the senders")
    before, after = evr["api"]
    if before and after:
        d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        print(f"  server counters in the window (API): video in {d['video_in_frames']} / out {d['video_out_frames']}, "
              f"audio in {d['audio_in_packets']} / out {d['audio_out_packets']}")
    other = evr["machine_busy_cores"] - evr["cpu"] - evr["clients_cpu"]
    print(f"  clients: {min(args.workers, n)} worker process(es) used {evr['clients_cpu']:.0f} % of one core; "
          f"machine busy {evr['machine_busy']:.0f} % of {os.cpu_count()} cores "
          f"(anything else running: {max(0.0, other):.0f} % of one core)")
    for row in (video["lossy"] + audio["lossy"])[:10]:
        print(f"  lost: call {row['call']} {row['direction']} {row['kind']}: {row['sent'] - row['delivered']} of "
              f"{row['sent']} (window frame numbers {row['missing']})")
    if log_problems:
        print(f"  server log: {len(log_problems)} warning/error line(s), e.g. {log_problems[0][:160]}")
    return lost


def print_recording(on: dict[str, Any], off: dict[str, Any]) -> float:
    """What recording costs, from the same calls with recording on and off: % of one
    core per recorded participant (every participant of every call is recorded)."""
    recorded = on["participants"] * on["calls"]
    cost = (on["cpu"] - off["cpu"]) / recorded
    print(f"recording: server CPU {on['cpu']:.1f} % with recording vs {off['cpu']:.1f} % without "
          f"({off['cpu'] / off['calls']:.2f} % per call) -> {cost:.2f} % of one core per recorded participant "
          f"({recorded} recorded, {on.get('recorded_segments', 0)} segments stored)")
    return cost


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10, help="concurrent 1:1 calls through EVR (default 10)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window (default 15)")
    parser.add_argument("--transcode-calls", type=int, default=1,
                        help="calls through the transcoding relay (default 1: it saturates 2 cores fast)")
    parser.add_argument("--transcode-seconds", type=float, default=None, help="its window (default --seconds)")
    parser.add_argument("--skip-transcoding", action="store_true", help="measure EVR only")
    parser.add_argument("--skip-recording-comparison", action="store_true",
                        help="do not run the calls a second time with recording off")
    parser.add_argument("--participants", type=int, default=2, choices=range(2, 2 + 1 + len(GUEST_ROLES)),
                        metavar="P", help="people per call (default 2); 3 to 6 also runs the calls with P people "
                                          "(the victim, the officer, guests) and compares CPU per participant-pair")
    parser.add_argument("--workers", type=int, default=2, help="client worker processes (default 2)")
    add_phase_options(parser)
    parser.add_argument("--transcoding-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.transcoding_server:
        run_transcoding_server(args.transcoding_server)
        return 0
    if args.calls < 1 or args.transcode_calls < 1 or args.seconds <= 0:
        parser.error("--calls, --transcode-calls and --seconds must be positive")

    return run_bench(bench, args, "evr-bench-")


def add_phase_options(parser: argparse.ArgumentParser) -> None:
    """The options :func:`run_phase` reads besides the client workers."""
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after all joined (default 3)")
    parser.add_argument("--drain", type=float, default=1.5,
                        help="seconds after the window for its last frames to arrive (default 1.5)")
    parser.add_argument("--vp8-target", type=int, default=700_000,
                        help="libvpx target for the clip; 700000 gives about 1 Mbit/s at 640x480")


def run_bench(bench: Any, args: argparse.Namespace, prefix: str) -> int:
    """Run ``bench(args, tmp, procs)`` in a temporary directory; the processes it lists in
    ``procs`` are ended and the directory removed however it ends. On a failure, the
    traceback and the last lines of every log in the directory. The exit status."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on kill too
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    procs: list[subprocess.Popen] = []
    try:
        asyncio.run(bench(args, tmp, procs))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        for log in sorted(tmp.rglob("*.log")):
            print(f"--- last lines of {log.relative_to(tmp)} ---\n{log_tail(log)}", file=sys.stderr)
        return 1
    finally:
        for proc in procs:
            stop_process(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
