#!/usr/bin/env python3
"""Benchmark: `evr retention due` over 1,000,000 evidence items, and a disposal run of
10,000 due items on the file store.

    python bench/retention.py                        # 1,000,000 items, 10,000 due, SQLite
    python bench/retention.py --items 100000 --due 2000
    python bench/retention.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/evr_bench

What it does:

1. Makes a data directory (temporary unless ``--data``) and fills the database as a
   force's would look after years of use: 1 consultation per 4 items; recordings
   (half, with their recording rows: evidential, or non-evidential and under 31 days
   old), uploads and statements, in consultations classified MoPI group 1, 2 or 3 over
   the last 5.5 years. Of them, ``--due`` are due now: half non-evidential recordings
   past their 31 days, half group 3 items past their 6 years.
2. Builds the retention schedule (``Retention.refresh``, what the service does once
   when retention first runs on an existing database) and prints how long it took.
3. Runs ``evr retention due`` (the real command, a fresh process, with its start-up
   and migration check) three times and prints the best and the slowest wall time.
   Target: under 1 s.
4. Stores two encrypted objects for each due item in the file store (a segment and a
   manifest), then runs ``evr retention dispose --due --execute`` and prints its wall
   time, after checking every due item's files are gone and a certificate was kept
   for each. Target: under 60 s.

The script exits 0 whether or not the targets are met; the PASS/FAIL lines say.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import func, insert, select

from evr.config import Settings
from evr.db import (
    Consultation, DisposalCertificate, EvidenceItem, Recording, RetentionAssignment, User, make_engine, migrate,
    sessionmaker,
)

YEAR = timedelta(days=365.25)
CHUNK = 20_000


#: `evr retention due` with only the retention commands registered: the same command
#: without the imports the other command modules make at start.
ALONE = """
import argparse, sys
from evr.cli import _common
from evr.retention.cli import register
parser = argparse.ArgumentParser()
register(parser.add_subparsers(dest="command"), _common)
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def alone(*args: str, data: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", ALONE, *args, "--data", str(data)], capture_output=True, env=env,
                   check=True, cwd=data)
    return time.perf_counter() - started


def evr(*args: str, data: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "evr", *args, "--data", str(data)], capture_output=True, text=True,
                          env=env)
    return time.perf_counter() - started, done


async def fill(settings: Settings, items: int, due: int, rng: random.Random) -> list[tuple[str, str]]:
    """Insert the data; return (id, prefix) of each item that is due for disposal."""
    engine = make_engine(settings.db_url)
    await migrate(engine)
    now = datetime.now(timezone.utc)
    due_items: list[tuple[str, str]] = []
    async with engine.begin() as conn:
        await conn.execute(insert(User), [{"id": 1, "username": "bench", "role": "officer", "password_hash": "x",
                                           "created_at": now, "disabled": False}])
    made = 0
    due_consultations = due // 4
    while made < items:
        consultations, assignments, evidence, recordings = [], [], [], []
        for _ in range(min(CHUNK // 4, (items - made + 3) // 4)):
            cid = str(uuid.uuid4())
            slot = made // 4
            # Due ones (every item of the consultation): half non-evidential footage of
            # 32-300 days ago, half group 3 cases of 6-7 years ago. The rest: cases of the
            # last 5.5 years in groups 1-3, with non-evidential footage only when recent.
            if slot < due_consultations and slot % 2 == 0:
                plan, opened, group = "footage", now - timedelta(days=rng.uniform(32, 300)), "group3"
            elif slot < due_consultations:
                plan, opened, group = "old", now - YEAR * rng.uniform(6.01, 7), "group3"
            else:
                plan, opened = "current", now - YEAR * rng.uniform(0, 5.5)
                group = rng.choice(["group3"] * 6 + ["group2"] * 3 + ["group1"])
            consultations.append({"id": cid, "cad_ref": f"CAD-{slot:08d}", "status": "closed", "created_by": 1,
                                  "created_at": opened, "victim": {}, "eligibility": {},
                                  "token_hash": uuid.uuid4().hex + uuid.uuid4().hex, "expires_at": opened})
            assignments.append({"consultation_id": cid, "retention_class": group, "reason": "bench", "set_by": "bench",
                                "set_at": opened})
            for n in range(4):
                if made >= items:
                    break
                made += 1
                item_id = str(uuid.uuid4())
                kind = "recording" if n < 2 or plan == "footage" else ("upload" if n == 2 else "statement")
                prefix = f"{kind}s/{cid}/{item_id}/"
                evidence.append({"id": item_id, "kind": kind, "consultation_id": cid, "prefix": prefix,
                                 "created_at": opened, "sha256": uuid.uuid4().hex * 2, "size": 1 << 20})
                if kind == "recording":
                    # (recent footage: under 30 days, so none falls due while the bench runs)
                    footage = plan == "footage" or (now - opened < timedelta(days=30) and n == 0)
                    recordings.append({"id": item_id, "consultation_id": cid, "participant": "victim",
                                       "status": "complete", "started_at": opened, "ended_at": opened,
                                       "duration_s": 60.0, "segments": 6, "head_hash": "0" * 64,
                                       "classification": "non_evidential" if footage else "evidential"})
                if plan != "current":
                    due_items.append((item_id, prefix))
        async with engine.begin() as conn:
            await conn.execute(insert(Consultation), consultations)
            await conn.execute(insert(RetentionAssignment), assignments)
            await conn.execute(insert(EvidenceItem), evidence)
            if recordings:
                await conn.execute(insert(Recording), recordings)
        print(f"\r  {made:,} items", end="", flush=True)
    print()
    await engine.dispose()
    return due_items


def service(settings: Settings):  # type: ignore[no-untyped-def]
    from evr.audit import AuditLog
    from evr.evidence import make_store
    from evr.keys import load_signing_key
    from evr.retention.policy import Policy
    from evr.retention.service import Retention
    from evr.timeutil import utcnow

    engine = make_engine(settings.db_url)
    db = sessionmaker(engine)
    key = load_signing_key(settings)
    store = make_store(settings)
    return engine, Retention(db, AuditLog(db, utcnow, key, store), store, Policy.from_config(settings.retention),
                             utcnow, key)


async def build_schedule(settings: Settings) -> float:
    engine, retention = service(settings)
    started = time.perf_counter()
    await retention.refresh()
    took = time.perf_counter() - started
    await retention.store.close()
    await engine.dispose()
    return took


async def due_in_process(settings: Settings) -> tuple[float, int]:
    """The work of `evr retention due` without the process start: refresh, then list."""
    engine, retention = service(settings)
    started = time.perf_counter()
    await retention.refresh()
    count = len([row async for row in retention.stream_due()])
    took = time.perf_counter() - started
    await retention.store.close()
    await engine.dispose()
    return took, count


async def store_objects(settings: Settings, due_items: list[tuple[str, str]]) -> None:
    from evr.evidence import make_store

    store = make_store(settings)
    limiter = asyncio.Semaphore(32)

    async def put(prefix: str) -> None:
        async with limiter:
            await store.add_bytes(prefix + "seg-000001.webm", os.urandom(4096))
            await store.add_bytes(prefix + "manifest.json", b'{"entries": []}')

    await asyncio.gather(*(put(prefix) for _, prefix in due_items))
    await store.close()


async def certificates(settings: Settings) -> int:
    engine = make_engine(settings.db_url)
    async with sessionmaker(engine)() as db:
        count = await db.scalar(select(func.count()).select_from(DisposalCertificate))
    await engine.dispose()
    return count or 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=10_000, help="items due for disposal now (a multiple of 4)")
    parser.add_argument("--data", type=Path, default=None, help="data directory (default: a temporary one)")
    parser.add_argument("--database-url", default="", help="default: SQLite in the data directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="evr-bench-retention-"))
    data.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "EVR_DATABASE_URL": args.database_url} if args.database_url else dict(os.environ)
    settings = Settings.load(data_dir=data, environ={}, database_url=args.database_url)
    rng = random.Random(7)
    try:
        print(f"filling {settings.db_url.split('?')[0]} with {args.items:,} evidence items ({args.due:,} due)")
        started = time.perf_counter()
        due_items = asyncio.run(fill(settings, args.items, args.due, rng))
        print(f"  filled in {time.perf_counter() - started:.1f} s")
        print(f"schedule built for {args.items:,} items in {asyncio.run(build_schedule(settings)):.1f} s "
              f"(once, when retention first meets an existing database)")

        times = []
        for _ in range(3):
            took, done = evr("retention", "due", data=data, env=env)
            if done.returncode != 0:
                print(done.stderr)
                return 1
            times.append(took)
        listed = len(done.stdout.splitlines()) - 2
        startup = min(evr("--help", data=data, env=env)[0] for _ in range(3))
        by_itself = min(alone("retention", "due", data=data, env=env) for _ in range(3))
        work, count = min(asyncio.run(due_in_process(settings)) for _ in range(3))
        print(f"evr retention due: {listed:,} items due listed; wall time best {min(times):.2f} s, "
              f"slowest {max(times):.2f} s (a fresh process each)")
        print(f"  of which: Python start-up and every command module's imports (evr --help) {startup:.2f} s; "
              f"refresh and listing {count:,} items, in process, {work:.2f} s")
        print(f"  the same command with only the retention commands registered: {by_itself:.2f} s")
        print(f"  target < 1 s: {'PASS' if min(times) < 1 else 'FAIL'}")

        print(f"storing 2 objects for each of the {len(due_items):,} items due for disposal...")
        asyncio.run(store_objects(settings, due_items))
        took, done = evr("retention", "dispose", "--due", "--execute", data=data, env=env)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:])
        gone = sum(not (data / "evidence" / prefix).exists() for _, prefix in due_items)
        kept = asyncio.run(certificates(settings))
        print(f"evr retention dispose --due --execute: {done.stdout.strip().splitlines()[-1]}")
        print(f"  {gone:,}/{len(due_items):,} items' files gone, {kept:,} certificates kept; wall time {took:.1f} s")
        print(f"  target < 60 s for 10,000 items: "
              f"{'PASS' if took < 60 and gone == len(due_items) == kept else 'FAIL'}")
        took, done = evr("audit", "verify", data=data, env=env)
        print(f"evr audit verify: {done.stdout.strip().splitlines()[0]} ({took:.1f} s)")
    finally:
        if args.data is None and not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
