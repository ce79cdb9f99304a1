"""Benchmark: evidence upload throughput over tus on loopback, beside a plain disk write.

1. Starts ``evr serve`` as a subprocess on a temporary data directory (SQLite, the files
   evidence store), adds an officer, logs in and creates a consultation.
2. Sends SIZE MiB as one tus upload (POST, then one streaming PATCH) and times it up to
   the 204, which comes once the server has hashed, sealed (AES-256-GCM), fsynced,
   verified and stored the file: the end-to-end ingest rate. The server's resident
   memory is sampled throughout (its growth is what the 2 GiB memory test bounds).
3. Downloads it back (decrypting stream) and checks the SHA-256.
4. Writes the same bytes to a file on the same disk with plain ``write`` + ``fsync``.

Prints MB/s for each and checks the targets: ingest >= 150 MB/s and >= half the
plain write. ``python bench/uploads.py --size 2048``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import aiohttp
import psutil

MiB = 1024 * 1024
PASSWORD = "bench-password-123"
ELIGIBLE = {"adult_or_carer_present": True, "offender_absent": True, "safe_location": True, "consent": True}
#: Distinct random data per MiB would cost the client as much CPU as the server; one
#: random block repeated is enough (nothing on the path compresses or deduplicates).
BLOCK = os.urandom(16 * MiB)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(size: int) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        sent = 0
        while sent < size:
            piece = BLOCK[: min(len(BLOCK), size - sent)]
            sent += len(piece)
            yield piece

    return chunks()


def expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    sent = 0
    while sent < size:
        piece = BLOCK[: min(len(BLOCK), size - sent)]
        digest.update(piece)
        sent += len(piece)
    return digest.hexdigest()


class RssSampler:
    """Samples a process's resident memory every few milliseconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return self.process.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


class LiveServer:
    """``evr serve`` in a subprocess, an officer logged in, one consultation."""

    def __init__(self, data: Path) -> None:
        self.data = data
        data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log: Optional[Any] = None
        self.http: Optional[aiohttp.ClientSession] = None
        self.csrf = ""
        self.consultation = ""

    async def start(self) -> "LiveServer":
        env = {**os.environ, "EVR_DATA_DIR": str(self.data)}
        subprocess.run([sys.executable, "-m", "evr", "user", "add", "bench", "--role", "officer", "--data",
                        str(self.data)], input=PASSWORD.encode(), check=True, capture_output=True, env=env)
        self.log = open(self.data / "server.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "evr", "serve", "--data", str(self.data), "--port",
                                      str(self.port)], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        # unsafe=True: keep cookies from an IP address (127.0.0.1).
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                          cookie_jar=aiohttp.CookieJar(unsafe=True))
        for _ in range(300):
            try:
                async with self.http.get(self.base + "/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("evr serve exited: " + (self.data / "server.log").read_text()[-2000:])
            await asyncio.sleep(0.1)
        async with self.http.post(self.base + "/api/login", json={"username": "bench", "password": PASSWORD}) as r:
            self.csrf = (await r.json())["csrf_token"]
        async with self.http.post(self.base + "/api/consultations", headers={"X-CSRF-Token": self.csrf},
                                  json={"cad_ref": "CAD-BENCH-1", "eligibility": ELIGIBLE}) as r:
            self.consultation = (await r.json())["id"]
        return self

    @property
    def uploads_url(self) -> str:
        return f"{self.base}/api/consultations/{self.consultation}/uploads"

    async def upload(self, size: int, name: str = "cctv-export.bin") -> tuple[str, dict[str, Any]]:
        """One tus upload of ``size`` bytes in a single streaming PATCH; the upload's JSON."""
        assert self.http is not None
        tus = {"Tus-Resumable": "1.0.0", "X-CSRF-Token": self.csrf}
        async with self.http.post(self.uploads_url, headers={**tus, "Upload-Length": str(size)}) as r:
            assert r.status == 201, await r.text()
            location = r.headers["Location"]
        headers = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
                   "Content-Length": str(size)}
        async with self.http.patch(self.base + location, data=payload(size), headers=headers) as r:
            assert r.status == 204, await r.text()
        async with self.http.get(self.base + location) as r:
            return location, await r.json()

    async def download_sha256(self, location: str) -> str:
        assert self.http is not None
        digest = hashlib.sha256()
        async with self.http.get(self.base + location + "/content") as r:
            assert r.status == 200
            async for chunk in r.content.iter_chunked(MiB):
                digest.update(chunk)
        return digest.hexdigest()

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()


def plain_write(path: Path, size: int) -> float:
    """Seconds to write ``size`` bytes (the same blocks) and fsync them."""
    start = time.perf_counter()
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = BLOCK[: min(len(BLOCK), size - written)]
            for i in range(0, len(piece), MiB):
                f.write(piece[i : i + MiB])
            written += len(piece)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


async def bench(size: int, workdir: Path) -> dict[str, float]:
    server = LiveServer(workdir / "data")
    try:
        await server.start()
        assert server.proc is not None
        await server.upload(4 * MiB, "warm-up.bin")  # imports, first-use allocations
        sampler = RssSampler(server.proc.pid)
        baseline = sampler.rss()
        with sampler:
            start = time.perf_counter()
            location, item = await server.upload(size)
            ingest = time.perf_counter() - start
        assert item["sha256"] == expected_sha256(size), "the server's hash differs from the bytes sent"
        start = time.perf_counter()
        assert await server.download_sha256(location) == item["sha256"], "the download differs"
        download = time.perf_counter() - start
    finally:
        await server.stop()
    plain = plain_write(workdir / "plain.bin", size)
    return {"ingest_mbps": size / MiB / ingest, "download_mbps": size / MiB / download,
            "plain_mbps": size / MiB / plain, "rss_growth_mb": (sampler.peak - baseline) / MiB,
            "baseline_mb": baseline / MiB}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="MiB to upload (default 2048)")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        r = asyncio.run(bench(args.size * MiB, Path(tmp)))
    print(f"upload: {args.size} MiB in one tus PATCH over loopback to evr serve (files store, SQLite)")
    print(f"ingest (SHA-256 + AES-256-GCM + fsync + verify + store): {r['ingest_mbps']:.0f} MB/s")
    print(f"plain disk write of the same bytes (write + fsync):       {r['plain_mbps']:.0f} MB/s")
    print(f"download (decrypting stream, hash checked):               {r['download_mbps']:.0f} MB/s")
    print(f"server peak RSS growth during the upload: {r['rss_growth_mb']:.1f} MB (baseline {r['baseline_mb']:.0f} MB)")
    ok_speed = r["ingest_mbps"] >= 150
    ok_ratio = r["ingest_mbps"] >= r["plain_mbps"] / 2
    print(f"targets: >= 150 MB/s: {'PASS' if ok_speed else 'FAIL'}; "
          f">= half the plain write ({r['ingest_mbps'] / r['plain_mbps']:.2f}x): {'PASS' if ok_ratio else 'FAIL'}")
    return 0 if ok_speed and ok_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
