"""Constant memory: a 2 GiB upload grows the server's peak RSS by less than 100 MB.

The server runs as ``evr serve`` in a subprocess (its memory alone is measured, with
psutil); the upload is one tus PATCH streamed from a generator. Timing is the
benchmark's business (bench/uploads.py), not this test's.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import uploads as bench  # noqa: E402  (bench/uploads.py: the live server and its client)

GiB = 1024**3


async def test_a_2_gib_upload_grows_the_server_by_less_than_100_mb(tmp_path):
    server = bench.LiveServer(tmp_path / "data")
    try:
        await server.start()
        await server.upload(4 * bench.MiB, "warm-up.bin")  # first-use imports and allocations
        sampler = bench.RssSampler(server.proc.pid)
        baseline = sampler.rss()
        with sampler:
            location, item = await server.upload(2 * GiB)
        growth = sampler.peak - baseline
    finally:
        await server.stop()
    assert item["size"] == 2 * GiB and item["sha256"] == bench.expected_sha256(2 * GiB)
    assert growth < 100 * 1024 * 1024, f"peak RSS grew by {growth / bench.MiB:.0f} MB"
    # Nothing stayed in staging: the sealed originals (warm-up and big one) are in the store.
    stored = sorted(p.stat().st_size for p in (tmp_path / "data" / "evidence" / "uploads").rglob("original"))
    assert len(stored) == 2 and 2 * GiB < stored[1] < 2 * GiB + 2048 * 64
    assert list((tmp_path / "data" / "uploads-staging").iterdir()) == []
