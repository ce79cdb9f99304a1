#!/usr/bin/env python3
"""Benchmark: the performance indicators (`GET /api/kpis`) for a year of 100,000
incidents with their timelines and outcomes (issue 14). Target: under 1 s.

    python bench/kpis.py                            # 100,000 incidents, SQLite
    python bench/kpis.py --incidents 10000 --runs 3
    python bench/kpis.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/evr_bench_kpis

What it does:

1. Makes a data directory (temporary unless ``--data``) and seeds the database straight
   with ``insert``: ``--incidents`` incidents reported over the past year (the queue
   benchmark's rows and timelines, ``bench/evr_queue.py``), those past triage with an
   officer, an arrival, an investigation record, a review (some later than 24 h) and,
   for most, a Home Office crime outcome.
2. Starts the real service (``evr serve``, a separate process), signs a sergeant in.
3. Asks ``GET /api/kpis`` for the whole year ``--runs`` times by day and by week, and
   prints the first (cold) and the slowest of the rest against the target.

It also seeds ``--surveys`` victim survey answers (30,000) over the year, read by the
figures' satisfaction part. The script exits 0 whether or not the target is met;
PASS/FAIL say.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
from evr_queue import CATEGORIES, CLOSED, PASSWORD, create_database, events_for, incident_row, start_server, stop_server
from sqlalchemy import insert

from evr.auth import hash_password
from evr.config import Settings
from evr.db import Incident, IncidentEvent, SurveyAnswer, User, make_engine, migrate

CHUNK = 5_000
TARGET_S = 1.0
OFFICERS = 20


def attended(row: dict, rng: random.Random) -> dict:
    """An incident past triage: taken, attended, recorded, reviewed, mostly an outcome
    (every row has every column: one ``executemany``)."""
    row.update({key: None for key in ("dispatched_to", "dispatched_name", "dispatched_at", "arrived_at",
                                      "call_closed_at", "submitted_at", "reviewed_at", "review_overdue",
                                      "crime_outcome", "crime_outcome_at")})
    if row["state"] == "rejected":
        return row
    reported = row["reported_at"]
    arrived = reported + timedelta(minutes=rng.lognormvariate(5.0, 1.0))  # median about 2.5 h
    submitted = arrived + timedelta(minutes=rng.uniform(30, 180))
    reviewed = submitted + timedelta(hours=rng.uniform(1, 30))
    officer = rng.randrange(OFFICERS)
    row.update(dispatched_to=100 + officer, dispatched_name=f"officer{officer}",
               dispatched_at=arrived - timedelta(minutes=5), arrived_at=arrived, call_closed_at=arrived
               + timedelta(minutes=40), submitted_at=submitted, reviewed_at=reviewed,
               review_overdue=reviewed - submitted > timedelta(hours=24))
    if rng.random() < 0.7:
        row.update(crime_outcome=rng.choice([1, 2, 3, 8, 14, 14, 15, 16, 16, 18, 18, 18]),
                   crime_outcome_at=reviewed + timedelta(days=rng.uniform(1, 30)))
    return row


async def seed(settings: Settings, count: int, surveys: int, rng: random.Random) -> None:
    engine = make_engine(settings.db_url)
    await migrate(engine)
    now = datetime.now(timezone.utc)
    hashed = hash_password(PASSWORD)
    users = [{"id": 1, "username": "sergeant1", "role": "sergeant", "password_hash": hashed, "created_at": now,
              "disabled": False}]
    users += [{"id": 100 + i, "username": f"officer{i}", "role": "officer", "password_hash": hashed,
               "created_at": now, "disabled": False} for i in range(OFFICERS)]
    async with engine.begin() as conn:
        await conn.execute(insert(User), users)
    made = 0
    while made < count:
        rows = [attended(incident_row(n, rng.choice(CLOSED), now - timedelta(days=rng.uniform(0, 365)), rng), rng)
                for n in range(made, min(count, made + CHUNK))]
        events = [e for i in rows for e in events_for(i, rng)]
        async with engine.begin() as conn:
            await conn.execute(insert(Incident), rows)
            await conn.execute(insert(IncidentEvent), events)
        made += len(rows)
        print(f"\r  {made:,} incidents", end="", flush=True)
    print()
    answers = [{"id": str(uuid.uuid4()), "answered_on": (now - timedelta(days=rng.uniform(0, 365))).date(),
                "satisfied": rng.choice([5, 5, 4, 4, 4, 3, 2, 1, None]),
                "would_use_again": rng.choice([True, True, True, False, None]),
                "felt_safe": rng.choice([5, 4, 4, 3, None]), "confidence_in_police": rng.choice([5, 4, 3, 2, None]),
                "grade": rng.choice([2, 3, 3, 4]), "category": rng.choice(CATEGORIES), "arm": None}
               for _ in range(surveys)]
    async with engine.begin() as conn:
        for start in range(0, len(answers), CHUNK):
            await conn.execute(insert(SurveyAnswer), answers[start:start + CHUNK])
    print(f"  {len(answers):,} survey answers")
    await engine.dispose()


async def measure(base: str, runs: int) -> dict[str, list[float]]:
    today = datetime.now(timezone.utc).date()
    year = f"from={(today - timedelta(days=364)).isoformat()}&to={today.isoformat()}"
    times: dict[str, list[float]] = {"day": [], "week": []}
    async with aiohttp.ClientSession(base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post("/api/login", json={"username": "sergeant1", "password": PASSWORD}) as response:
            if response.status != 200:
                raise RuntimeError(f"login: {response.status} {await response.text()}")
        for _ in range(runs):
            for group in times:
                started = time.perf_counter()
                async with http.get(f"/api/kpis?{year}&group_by={group}") as response:
                    body = await response.json()
                    if response.status != 200:
                        raise RuntimeError(f"kpis: {response.status} {body}")
                times[group].append(time.perf_counter() - started)
        print(f"  the year: {body['incidents']['created']:,} incidents, response p50 "
              f"{body['response_minutes']['p50']} min, {body['satisfaction']['responses']:,} survey answers "
              f"({body['satisfaction']['satisfied_pct']} % satisfied), {len(body['series'])} weeks")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--incidents", type=int, default=100_000)
    parser.add_argument("--surveys", type=int, default=30_000, help="victim survey answers over the year")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", type=Path, default=None, help="data directory (default: a temporary one)")
    parser.add_argument("--database-url", default="", help="default: SQLite in the data directory; a PostgreSQL "
                        "database is created (dropped first if it exists) and dropped at the end")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="evr-bench-kpis-"))
    data.mkdir(parents=True, exist_ok=True)
    settings = Settings.load(data_dir=data, environ={}, database_url=args.database_url)
    server = None
    try:
        if args.database_url.startswith("postgresql"):
            asyncio.run(create_database(args.database_url))
        print(f"database: {settings.db_url.split('?')[0]}")
        print(f"seeding {args.incidents:,} incidents over a year")
        started = time.perf_counter()
        asyncio.run(seed(settings, args.incidents, args.surveys, random.Random(14)))
        print(f"  seeded in {time.perf_counter() - started:.1f} s")
        server, base = start_server(data, args.database_url)
        times = asyncio.run(measure(base, args.runs))
        for group, values in times.items():
            slowest = max(values[1:] or values)
            print(f"GET /api/kpis for a year by {group}: first {values[0] * 1000:.0f} ms, then at most "
                  f"{slowest * 1000:.0f} ms over {len(values) - 1} runs")
            print(f"  target < {TARGET_S:g} s: {'PASS' if max(values) < TARGET_S else 'FAIL'}")
    finally:
        stop_server(server)
        if args.database_url.startswith("postgresql"):
            asyncio.run(create_database(args.database_url, drop=True))
        if args.data is None:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
