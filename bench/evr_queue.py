#!/usr/bin/env python3
"""Benchmark: the EVR queue board (`GET /api/queue`) and `POST /api/queue/take` with
100,000 incidents over a year in the database and 50 officers polling (issue 13).

    python bench/evr_queue.py                            # 100,000 incidents, 50 officers, 20 s, SQLite
    python bench/evr_queue.py --incidents 2000 --seconds 5
    python bench/evr_queue.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/evr_bench_queue

What it does:

1. Makes a data directory (temporary unless ``--data``) and seeds the database straight
   with ``insert``: ``--incidents`` incidents reported over the past year, nearly all
   closed (finalised, patrol_*, rejected) with 3-5 timeline rows each, and a live tail
   reported in the last 3 days: ``--queued`` queued and ``--allocated`` allocated to
   the bench officers. Users: ``--officers`` officers and a sergeant (one password hash).
2. Starts the real service (``evr serve``, a separate process) and waits for it.
3. Logs the officers in (a session each) and for ``--seconds``: every officer polls
   ``GET /api/queue`` with a 50-200 ms pause between polls, and ``--takers`` of them
   call ``POST /api/queue/take`` about once a second.
4. Prints count, p50, p99 and max latency of each. Target: p99 under 50 ms.

The script exits 0 whether or not the targets are met; the PASS/FAIL lines say.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
from sqlalchemy import insert

from evr.auth import CSRF_HEADER, hash_password
from evr.config import Settings
from evr.db import Incident, IncidentEvent, User, make_engine, migrate

CHUNK = 5_000
PASSWORD = "bench-queue-password-1"
TARGET_MS = 50.0
CATEGORIES = ["theft", "criminal_damage", "burglary_non_dwelling", "harassment", "fraud", "assault_no_injury",
              "vehicle_crime", "shoplifting", "public_order", "domestic_non_urgent"]
CLOSED = ["finalised"] * 6 + ["patrol_suspect", "patrol_enquiries", "rejected", "rejected"]


def incident_row(n: int, state: str, reported: datetime, rng: random.Random, **extra: object) -> dict:
    return {"id": str(uuid.uuid4()), "cad_ref": f"CAD-{n:08d}", "state": state, "grade": rng.choice([3, 3, 3, 4, 4, 2]),
            "category": rng.choice(CATEGORIES), "reported_at": reported, "summary": "Reported by phone; "
            "victim happy to be seen by video.", "victim": {"name": "Bench Victim", "phone": "07700900000"},
            "eligibility": {}, "vulnerability": rng.random() < 0.1, "high_harm": False,
            "created_at": reported, "updated_at": reported, "created_by": "bench", "created_by_role": "call_handler",
            "created_by_id": 1, **extra}


def events_for(incident: dict, rng: random.Random) -> list[dict]:
    at = incident["reported_at"]
    path = ["triage", "queued", "dispatched", "in_call", "awaiting_review", incident["state"]]
    if incident["state"] == "rejected":
        path = ["triage", "rejected"]
    elif incident["state"] in ("queued", "allocated"):
        path = ["triage", incident["state"]]
    rows = []
    for before, after in zip([None, *path], path, strict=False):
        at = at + timedelta(minutes=rng.uniform(5, 240))
        rows.append({"incident_id": incident["id"], "at": at, "kind": "state", "from_state": before,
                     "to_state": after, "actor": "bench", "role": "sergeant", "reason": None, "details": None})
    return rows


async def seed(settings: Settings, args: argparse.Namespace, rng: random.Random) -> None:
    engine = make_engine(settings.db_url)
    await migrate(engine)
    now = datetime.now(timezone.utc)
    hashed = hash_password(PASSWORD)
    users = [{"id": 1, "username": "sergeant1", "role": "sergeant", "password_hash": hashed, "created_at": now,
              "disabled": False}]
    users += [{"id": 100 + i, "username": f"officer{i}", "role": "officer", "password_hash": hashed,
               "created_at": now, "disabled": False} for i in range(args.officers)]
    async with engine.begin() as conn:
        await conn.execute(insert(User), users)
    live = args.queued + args.allocated
    closed = max(args.incidents - live, 0)
    made = 0
    while made < args.incidents:
        incidents: list[dict] = []
        for _ in range(min(CHUNK, args.incidents - made)):
            if made < closed:
                row = incident_row(made, rng.choice(CLOSED), now - timedelta(days=rng.uniform(3, 365)), rng)
            else:
                k = made - closed
                reported = now - timedelta(hours=rng.uniform(0.1, 72))
                if k < args.allocated:
                    officer = rng.randrange(args.officers)
                    row = incident_row(made, "allocated", reported, rng, allocated_to=100 + officer,
                                       allocated_name=f"officer{officer}")
                else:
                    row = incident_row(made, "queued", reported, rng)
            incidents.append(row)
            made += 1
        events = [e for i in incidents for e in events_for(i, rng)]
        async with engine.begin() as conn:
            await conn.execute(insert(Incident), incidents)
            await conn.execute(insert(IncidentEvent), events)
        print(f"\r  {made:,} incidents", end="", flush=True)
    print()
    await engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_up(base: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError("evr serve exited")
            try:
                async with http.get(base + "/api/queue") as response:
                    await response.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
    raise RuntimeError("evr serve did not answer")


def start_server(data: Path, database_url: str) -> tuple[subprocess.Popen, str]:
    """``evr serve`` on ``data`` (and ``database_url``, if any) in a process of its own,
    its log in ``data/serve.log``; returns it and its base URL once it answers."""
    env = {**os.environ, "EVR_DATABASE_URL": database_url} if database_url else dict(os.environ)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "evr", "serve", "--data", str(data), "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(data / "serve.log", "w"))
    base = f"http://127.0.0.1:{port}"
    asyncio.run(wait_up(base, server))
    return server, base


def stop_server(server: subprocess.Popen | None) -> None:
    """Stop it as an operator would (SIGINT), harder if it does not stop."""
    if server is not None and server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.terminate()
            server.wait(15)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def drive(base: str, args: argparse.Namespace) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {"GET /api/queue": [], "POST /api/queue/take": []}
    statuses: dict[str, dict[int, int]] = {name: {} for name in latencies}
    connector = aiohttp.TCPConnector(limit=0)
    sessions = [aiohttp.ClientSession(base, connector=connector, connector_owner=False,
                                      cookie_jar=aiohttp.CookieJar(unsafe=True)) for _ in range(args.officers)]
    tokens = []
    try:
        for i, http in enumerate(sessions):
            async with http.post("/api/login", json={"username": f"officer{i}", "password": PASSWORD}) as response:
                body = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"login officer{i}: {response.status} {body}")
                tokens.append(body["csrf_token"])
        stop = time.monotonic() + args.seconds

        async def timed(name: str, call) -> None:  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            async with call as response:
                await response.read()
            latencies[name].append((time.perf_counter() - started) * 1000)
            statuses[name][response.status] = statuses[name].get(response.status, 0) + 1

        async def poller(http: aiohttp.ClientSession) -> None:
            await asyncio.sleep(random.uniform(0, 0.2))
            while time.monotonic() < stop:
                await timed("GET /api/queue", http.get("/api/queue"))
                await asyncio.sleep(random.uniform(0.05, 0.2))

        async def taker(http: aiohttp.ClientSession, token: str) -> None:
            await asyncio.sleep(random.uniform(0, 1))
            while time.monotonic() < stop:
                await timed("POST /api/queue/take", http.post("/api/queue/take", json={},
                                                              headers={CSRF_HEADER: token}))
                await asyncio.sleep(random.uniform(0.8, 1.2))

        await asyncio.gather(*(poller(http) for http in sessions),
                             *(taker(sessions[i], tokens[i]) for i in range(min(args.takers, args.officers))))
    finally:
        for http in sessions:
            await http.close()
        await connector.close()
    for name, counts in statuses.items():
        print(f"  {name} statuses: {dict(sorted(counts.items()))}")
    return latencies


async def create_database(url: str, drop: bool = False) -> None:
    import asyncpg

    base, name = url.replace("postgresql+asyncpg://", "postgresql://").rsplit("/", 1)
    conn = await asyncpg.connect(base + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if not drop:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--incidents", type=int, default=100_000)
    parser.add_argument("--queued", type=int, default=300)
    parser.add_argument("--allocated", type=int, default=50)
    parser.add_argument("--officers", type=int, default=50)
    parser.add_argument("--takers", type=int, default=5, help="officers who also take, about once a second")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--data", type=Path, default=None, help="data directory (default: a temporary one)")
    parser.add_argument("--database-url", default="", help="default: SQLite in the data directory; a PostgreSQL "
                        "database is created (dropped first if it exists) and dropped at the end")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="evr-bench-queue-"))
    data.mkdir(parents=True, exist_ok=True)
    settings = Settings.load(data_dir=data, environ={}, database_url=args.database_url)
    server = None
    try:
        if args.database_url.startswith("postgresql"):
            asyncio.run(create_database(args.database_url))
        print(f"database: {settings.db_url.split('?')[0]}")
        print(f"seeding {args.incidents:,} incidents over a year ({args.queued} queued, {args.allocated} allocated)")
        started = time.perf_counter()
        asyncio.run(seed(settings, args, random.Random(13)))
        print(f"  seeded in {time.perf_counter() - started:.1f} s")
        server, base = start_server(data, args.database_url)
        print(f"{args.officers} officers polling for {args.seconds:g} s, {args.takers} of them taking")
        latencies = asyncio.run(drive(base, args))
        for name, values in latencies.items():
            if not values:
                print(f"{name}: no requests")
                continue
            p99 = percentile(values, 99)
            print(f"{name}: {len(values):,} requests; p50 {percentile(values, 50):.1f} ms, p99 {p99:.1f} ms, "
                  f"max {max(values):.1f} ms")
            print(f"  target p99 < {TARGET_MS:g} ms: {'PASS' if p99 < TARGET_MS else 'FAIL'}")
    finally:
        stop_server(server)
        if args.database_url.startswith("postgresql"):
            asyncio.run(create_database(args.database_url, drop=True))
        if args.data is None and not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
