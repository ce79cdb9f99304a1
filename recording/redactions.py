"""Redaction jobs: a blurred and muted copy of a recording, made in the background.

Evidence never changes: a redaction makes a new recording (``kind`` = ``redacted``)
beside the original, with its own segments and its own signed manifest, which names
the original (its id and the SHA-256 of its manifest, whose signed copy travels with
it) and every operation. ``evr recording verify`` checks both (:mod:`.verify`).

- **Queued in the database** (:class:`Jobs`), so a request survives a restart. A
  worker claims the oldest queued job with a conditional update (two workers never
  take the same one), writes its progress every second or so (the heartbeat), and a
  job whose worker stopped writing for ``redaction_stale_seconds`` is queued again
  (at most ``redaction_attempts`` starts, then it fails saying so).
- **Run by** :class:`Redactor`: inside ``evr serve`` (``redaction_workers``, default
  one at a time, so a small box stays responsive during calls) and in ``evr worker``
  processes. The media work itself (decoding, blurring, encoding: seconds of CPU per
  second of video) runs in a child process at low priority, ``python -m
  evr.recording.redact`` (:mod:`.redact`), which gets plaintext segments in a private
  folder and holds no key; the worker checks each segment against the signed manifest
  as it decrypts it, so what is redacted is what was sealed.
- **Cancel**: a queued job is cancelled at once; a running one is told through its
  row and its child process is stopped at the next heartbeat. Nothing of a cancelled
  or failed job stays: its folder is removed and anything it stored is disposed of
  (audit-logged).
- **Every change with its audit entry**: the request (``recording.redaction_request``),
  the copy, its entries, its evidence item and the job's end (``recording.redact``),
  a failure (``recording.redaction_fail``), a cancel (``recording.redaction_cancel``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from evr import __version__
from evr.audit import Actor, AuditLog
from evr.config import Settings
from evr.db import Consultation, EvidenceItem, Recording, RecordingEntry, RedactionJob, User
from evr.errors import ApiError
from evr.evidence import EvidenceStore, ItemExists, ItemMissing
from evr.keys import fingerprint
from evr.tasks import TaskSet
from evr.text import parse_json
from evr.timeutil import Clock, rfc3339

from . import manifest as mf
from .operations import Operations
from .recorder import hash_file
from .service import entries_of, prefix
from .verify import SOURCE_MANIFEST, SOURCE_SIGNATURE

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
#: Seconds between a worker's looks at the queue when it is empty.
POLL_SECONDS = 2.0
#: At most one progress write per this many seconds (the heartbeat).
REPORT_SECONDS = 1.0
#: Longest line the media process may write (progress and the final report).
MAX_LINE = 1 << 20


def job_json(job: RedactionJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "progress": round(job.progress, 4),
        "eta_s": None if job.eta_s is None else round(job.eta_s, 1),
        "recording_id": job.result_recording_id if job.status == "done" else None,
        "source_recording_id": job.recording_id,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "operations": job.operations,
        "created_at": rfc3339(job.created_at),
        "started_at": rfc3339(job.started_at),
        "finished_at": rfc3339(job.finished_at),
    }


class JobFailed(Exception):
    """A job that cannot be done; the message is for the officer who asked."""


class Cancelled(Exception):
    """The job was cancelled while it ran."""


class Jobs:
    """The queue: requests, claims, progress, cancels and ends, each one conditional
    on the state it expects, so racing requests and workers never overwrite each other."""

    def __init__(self, settings: Settings, clock: Clock, db: async_sessionmaker, audit: AuditLog) -> None:
        self.settings = settings
        self.clock = clock
        self.db = db
        self.audit = audit
        #: Set when a job is queued: a worker of this process looks at once.
        self.queued = asyncio.Event()

    async def request(self, who: Actor, user_id: int, recording: Recording, operations: Operations,
                      reason: str) -> RedactionJob:
        job = RedactionJob(id=str(uuid.uuid4()), consultation_id=recording.consultation_id,
                           recording_id=recording.id, operations=operations.json(), reason=reason,
                           requested_by=user_id, status="queued", progress=0.0, attempts=0,
                           cancel_requested=False, created_at=self.clock())
        async with self.audit.transaction() as tx:
            tx.db.add(job)
            tx.add(who, "recording.redaction_request", f"recording:{recording.id}",
                   consultation_id=recording.consultation_id, reason=reason,
                   details={"job": job.id, "operations": job.operations})
        self.queued.set()
        return job

    async def of_recording(self, recording_id: str) -> list[RedactionJob]:
        async with self.db() as db:
            rows = await db.scalars(select(RedactionJob).where(RedactionJob.recording_id == recording_id)
                                    .order_by(RedactionJob.created_at.desc(), RedactionJob.id))
            return list(rows)

    async def get(self, recording_id: str, job_id: str) -> RedactionJob:
        try:
            uuid.UUID(job_id)
        except ValueError:
            raise ApiError(404, "not_found", "No such redaction.") from None
        async with self.db() as db:
            job = await db.get(RedactionJob, job_id)
        if job is None or job.recording_id != recording_id:
            raise ApiError(404, "not_found", "No such redaction.")
        return job

    async def cancel(self, who: Actor, job: RedactionJob) -> RedactionJob:
        """A queued job ends now; a running one is asked to stop (its worker ends it
        within a second or two). 409 ``job_finished`` when it has ended already."""
        now = self.clock()
        async with self.audit.transaction() as tx:
            row = await tx.db.get(RedactionJob, job.id)
            assert row is not None
            if row.status in FINISHED:
                raise ApiError(409, "job_finished", f"This redaction has ended already ({row.status}).")
            row.cancel_requested = True
            if row.status == "queued":
                row.status, row.finished_at = "cancelled", now
            tx.add(who, "recording.redaction_cancel", f"recording:{row.recording_id}",
                   consultation_id=row.consultation_id, details={"job": row.id, "was": job.status})
            await tx.db.flush()
            return row

    async def claim(self, worker: str) -> Optional[RedactionJob]:
        """The oldest queued job, now running in ``worker``; None when there is none.
        Jobs of stopped workers are put back first (:meth:`_requeue_stale`)."""
        await self._requeue_stale()
        now = self.clock()
        async with self.db() as db:
            candidates = list(await db.scalars(select(RedactionJob.id).where(RedactionJob.status == "queued")
                                               .order_by(RedactionJob.created_at, RedactionJob.id).limit(5)))
            for job_id in candidates:
                claimed = await db.execute(
                    update(RedactionJob).where(RedactionJob.id == job_id, RedactionJob.status == "queued")
                    .values(status="running", worker=worker[:100], started_at=now, heartbeat_at=now,
                            attempts=RedactionJob.attempts + 1, progress=0.0, eta_s=None,
                            result_recording_id=str(uuid.uuid4())))
                await db.commit()
                if getattr(claimed, "rowcount", 0) == 1:
                    return await db.get(RedactionJob, job_id, populate_existing=True)
        return None

    async def _requeue_stale(self) -> None:
        before = self.clock() - timedelta(seconds=self.settings.redaction_stale_seconds)
        async with self.db() as db:
            stale = list(await db.scalars(select(RedactionJob).where(
                RedactionJob.status == "running", RedactionJob.heartbeat_at < before)))
        for job in stale:
            if job.cancel_requested:
                status, error = "cancelled", None
            elif job.attempts >= self.settings.redaction_attempts:
                status, error = "failed", (f"The redaction stopped {job.attempts} times before it finished "
                                           "(its worker ended). Ask again, or tell your IT team.")
            else:
                status, error = "queued", None
            async with self.audit.transaction() as tx:
                moved = await tx.db.execute(
                    update(RedactionJob).where(RedactionJob.id == job.id, RedactionJob.status == "running",
                                               RedactionJob.heartbeat_at == job.heartbeat_at)
                    .values(status=status, error=error, worker=None,
                            finished_at=None if status == "queued" else self.clock()))
                if getattr(moved, "rowcount", 0) != 1:
                    continue
                tx.add(Actor.system(), "recording.redaction_requeue" if status == "queued"
                       else f"recording.redaction_{'fail' if status == 'failed' else 'cancel'}",
                       f"recording:{job.recording_id}", consultation_id=job.consultation_id,
                       details={"job": job.id, "worker": job.worker, "attempts": job.attempts,
                                **({"error": error} if error else {})})
            log.warning("redaction %s: its worker %s stopped reporting; now %s", job.id, job.worker, status)

    async def report(self, job: RedactionJob, worker: str, progress: float, eta_s: Optional[float]) -> bool:
        """Write progress (the heartbeat); False when the job is no longer this
        worker's to run (cancelled, or taken back as stale)."""
        async with self.db() as db:
            written = await db.execute(
                update(RedactionJob).where(RedactionJob.id == job.id, RedactionJob.status == "running",
                                           RedactionJob.worker == worker[:100],
                                           RedactionJob.cancel_requested.is_(False))
                .values(progress=max(0.0, min(1.0, progress)), eta_s=eta_s, heartbeat_at=self.clock()))
            await db.commit()
        return getattr(written, "rowcount", 0) == 1

    async def end(self, job: RedactionJob, worker: str, status: str, error: Optional[str] = None) -> None:
        """A job that did not finish its copy ends ``failed`` (saying why) or ``cancelled``."""
        async with self.audit.transaction() as tx:
            ended = await tx.db.execute(
                update(RedactionJob).where(RedactionJob.id == job.id, RedactionJob.status == "running",
                                           RedactionJob.worker == worker[:100])
                .values(status=status, error=error, eta_s=None, finished_at=self.clock()))
            if getattr(ended, "rowcount", 0) == 1:
                action = "recording.redaction_fail" if status == "failed" else "recording.redaction_cancel"
                tx.add(Actor.system(), action, f"recording:{job.recording_id}",
                       consultation_id=job.consultation_id,
                       details={"job": job.id, **({"error": error} if error else {})})


@dataclass
class _Source:
    recording: Recording
    consultation: Consultation
    body: bytes  #: the original's manifest.json, as signed
    signature: bytes
    manifest: dict[str, Any]


class Redactor:
    """A worker: claims jobs and makes their copies, at most ``slots`` at once."""

    def __init__(self, settings: Settings, clock: Clock, db: async_sessionmaker, store: EvidenceStore,
                 key: Ed25519PrivateKey, audit: AuditLog, jobs: Jobs, slots: int = 1) -> None:
        self.settings = settings
        self.clock = clock
        self.db = db
        self.store = store
        self.key = key
        self.audit = audit
        self.jobs = jobs
        self.slots = max(1, slots)
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.work = settings.data_dir / "spool" / "redactions"
        self.tasks = TaskSet("redactions")
        #: Jobs this worker claimed and has not ended.
        self.running: dict[str, RedactionJob] = {}

    async def run(self, stop: Optional[asyncio.Event] = None, once: bool = False) -> int:
        """Take jobs until ``stop`` is set (or, ``once``, until the queue is empty);
        how many ran. Stopped or cancelled (the service stopping), every job it
        claimed and did not end goes back to the queue for the next start: one whose
        task was still starting, or a claim that committed as the cancel came, too."""
        await self._clear_leftovers()
        ran = 0
        try:
            while stop is None or not stop.is_set():
                job = await self._claim() if len(self.tasks) < self.slots else None
                if job is not None:
                    ran += 1
                    self.tasks.spawn(self.run_job(job), f"job {job.id}")
                    continue
                if once and not len(self.tasks):
                    return ran
                self.jobs.queued.clear()
                waits = [asyncio.ensure_future(self.jobs.queued.wait())]
                if stop is not None:
                    waits.append(asyncio.ensure_future(stop.wait()))
                _, pending = await asyncio.wait(waits, timeout=POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED)
                for waiting in pending:
                    waiting.cancel()
        finally:
            await self.tasks.close()
            for job in list(self.running.values()):
                await asyncio.shield(self._requeue(job))
            self.running.clear()
        return ran

    async def _claim(self) -> Optional[RedactionJob]:
        """A job claimed for this worker and noted as running here, whatever cancels
        the wait: a claim is one commit, and a job claimed is never left unnoted."""
        claiming = asyncio.ensure_future(self.jobs.claim(self.name))
        try:
            job = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            job = await claiming
            if job is not None:
                self.running[job.id] = job
            raise
        if job is not None:
            self.running[job.id] = job
        return job

    async def _clear_leftovers(self) -> None:
        """Folders a crash left (plaintext media) of jobs that have ended or are gone:
        removed at start. A queued job's folder is made afresh when it is claimed; a
        running one's belongs to another worker sharing the data directory."""
        if not await asyncio.to_thread(self.work.is_dir):
            return
        folders = await asyncio.to_thread(lambda: [f for f in self.work.iterdir() if f.is_dir()])
        async with self.db() as db:
            live = set(await db.scalars(select(RedactionJob.id).where(RedactionJob.status.in_(("queued", "running")))))
        for folder in folders:
            if folder.name not in live:
                await asyncio.to_thread(shutil.rmtree, folder, True)

    async def run_job(self, job: RedactionJob) -> None:
        """Make a claimed job's copy, or end it failed or cancelled. Cancelled itself
        (the service stopping), it leaves the job in :attr:`running`, which
        :meth:`run` puts back in the queue."""
        folder = self.work / job.id
        self.running[job.id] = job
        try:
            try:
                await self._make(job, folder)
            except Cancelled:
                await self._discard(job)
                await self.jobs.end(job, self.name, "cancelled")
                log.info("redaction %s cancelled", job.id)
            except JobFailed as exc:
                await self._discard(job)
                await self.jobs.end(job, self.name, "failed", str(exc))
                log.warning("redaction %s failed: %s", job.id, exc)
            except Exception:  # noqa: BLE001 - the job fails, the worker goes on
                log.exception("redaction %s failed", job.id)
                await self._discard(job)
                await self.jobs.end(job, self.name, "failed", "The redaction failed inside the service. Ask again; "
                                                              "if it fails again, tell your IT team (see its log).")
            self.running.pop(job.id, None)
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)

    async def _requeue(self, job: RedactionJob) -> None:
        try:
            await self._discard(job)
            async with self.db() as db:
                await db.execute(update(RedactionJob).where(
                    RedactionJob.id == job.id, RedactionJob.status == "running", RedactionJob.worker == self.name)
                    .values(status="queued", worker=None, progress=0.0, eta_s=None))
                await db.commit()
        except Exception:  # noqa: BLE001 - the stale check requeues it instead
            log.exception("redaction %s could not be put back in the queue", job.id)

    async def _discard(self, job: RedactionJob) -> None:
        """Dispose of whatever this attempt stored (nothing when it never got that far),
        unless its copy was recorded."""
        rid = job.result_recording_id
        if rid is None:
            return
        async with self.db() as db:
            if await db.get(Recording, rid) is not None:
                return
        base = prefix(job.consultation_id, rid)
        if not await self.store.keys(base):
            return
        disposed = await self.store.dispose_all_versions(base)
        await self.audit.record(Actor.system(), "recording.redaction_discard", f"recording:{rid}",
                                consultation_id=job.consultation_id,
                                details={"job": job.id, "prefix": base, "removed": disposed.removed})

    async def _source(self, job: RedactionJob) -> _Source:
        async with self.db() as db:
            recording = await db.get(Recording, job.recording_id)
            consultation = await db.get(Consultation, job.consultation_id)
        if recording is None or consultation is None:
            raise JobFailed("The recording is no longer held (disposed of under the retention rules).")
        if recording.manifest_sha256 is None:
            raise JobFailed("The recording is still being recorded.")
        base = prefix(recording.consultation_id, recording.id)
        try:
            body = await self.store.read_bytes(base + mf.MANIFEST)
            signature = await self.store.read_bytes(base + mf.SIGNATURE)
        except ItemMissing:
            raise JobFailed("The recording's media is no longer held (disposed of).") from None
        if hashlib.sha256(body).hexdigest() != recording.manifest_sha256:
            raise JobFailed("The recording's manifest does not match its recorded hash: it was not redacted. "
                            "Run evr recording verify on it and tell your IT team.")
        try:
            mf.check_signature(self.key.public_key(), body, signature)
            parsed = mf.parse(body)
        except mf.Problem as exc:
            raise JobFailed(f"The recording's manifest does not verify ({exc}): it was not redacted.") from None
        return _Source(recording, consultation, body, signature, parsed)

    async def _make(self, job: RedactionJob, folder: Path) -> None:
        source = await self._source(job)
        await asyncio.to_thread(_fresh_folder, folder)
        operations = job.operations
        started = _instant(source.manifest["recording"]["started_at"])
        inputs = []
        segments = mf.segments(source.manifest["entries"])
        base = prefix(source.recording.consultation_id, source.recording.id)
        for n, entry in enumerate(segments):
            path = folder / "in" / entry["file"]
            await self._decrypt(base + entry["file"], path, entry)
            inputs.append({"path": str(path), "output": str(folder / "out" / entry["file"]),
                           "start_ms": _ms(entry["started_at"], started), "end_ms": _ms(entry["ended_at"], started)})
            if not await self.jobs.report(job, self.name, 0.05 * (n + 1) / len(segments), None):
                raise Cancelled()
        results = await self._media(job, inputs, operations)
        await self._seal(job, source, folder, results)

    async def _decrypt(self, key: str, path: Path, entry: dict[str, Any]) -> None:
        """The segment as plaintext in the job's folder, checked against the signed
        manifest: what is redacted is what was sealed."""
        digest = hashlib.sha256()
        size = 0
        handle = await asyncio.to_thread(open, path, "wb")
        try:
            async for chunk in self.store.read(key):
                digest.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(handle.write, chunk)
        except ItemMissing:
            raise JobFailed(f"The recording's segment {entry['file']} is no longer held.") from None
        finally:
            await asyncio.to_thread(handle.close)
        if digest.hexdigest() != entry["sha256"] or size != entry["size"]:
            raise JobFailed(f"The recording's segment {entry['file']} does not match its manifest: it was not "
                            "redacted. Run evr recording verify on it and tell your IT team.")

    async def _media(self, job: RedactionJob, inputs: list[dict[str, Any]], operations: dict[str, Any]
                     ) -> list[dict[str, Any]]:
        """Run the media process; its segment reports. Progress goes to the job's row
        (5 % to 95 %); a cancel stops the process."""
        from evr.uploads.worker import worker_environment

        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "evr.recording.redact", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=worker_environment(),
            preexec_fn=_lower_priority, limit=MAX_LINE, close_fds=True)
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        request = {"inputs": inputs, "operations": operations, "memory_mb": self.settings.redaction_memory_mb}
        done: Optional[dict[str, Any]] = None
        error: Optional[str] = None
        last = 0.0
        loop = asyncio.get_running_loop()
        stderr = asyncio.ensure_future(_drain(process.stderr))
        try:
            process.stdin.write(json.dumps(request).encode())
            await process.stdin.drain()
            process.stdin.close()
            while line := await process.stdout.readline():
                message = _message(line)
                if "progress" in message:
                    now = loop.time()
                    if now - last >= REPORT_SECONDS:
                        last = now
                        fraction = float(message["progress"]) if _number(message["progress"]) else 0.0
                        eta = float(message["eta_s"]) if _number(message.get("eta_s")) else None
                        if not await self.jobs.report(job, self.name, 0.05 + 0.9 * fraction, eta):
                            raise Cancelled()
                elif isinstance(message.get("done"), dict):
                    done = message["done"]
                elif isinstance(message.get("error"), str):
                    error = message["error"][:500]
            code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            stderr.cancel()
        if error is not None:
            raise JobFailed(f"The recording could not be redacted: {error}")
        if code != 0 or done is None or not isinstance(done.get("segments"), list):
            log.warning("redaction %s: the media process ended with status %s", job.id, code)
            raise JobFailed("The redaction process stopped before it finished (exit status "
                            f"{code}). Ask again; if it fails again, tell your IT team.")
        if len(done["segments"]) != len(inputs):
            raise JobFailed("The redaction process did not make every segment.")
        return [s if isinstance(s, dict) else {} for s in done["segments"]]

    async def _seal(self, job: RedactionJob, source: _Source, folder: Path, results: list[dict[str, Any]]) -> None:
        """Store the copy's segments, its original's signed manifest and its own, then
        record the copy, its entries, its evidence item and the job's end with the
        ``recording.redact`` entry, in one transaction."""
        rid = job.result_recording_id
        assert rid is not None
        base = prefix(source.recording.consultation_id, rid)
        entries: list[dict[str, Any]] = []
        results_by_file = dict(zip((e["file"] for e in mf.segments(source.manifest["entries"])), results,
                                   strict=True))
        size = 0
        faces = 0
        for entry in source.manifest["entries"]:
            kind = entry.get("type")
            if kind == "segment":
                result = results_by_file[entry["file"]]
                path = folder / "out" / entry["file"]
                if not int(result.get("packets") or 0) or not path.is_file():
                    entries.append({"type": "gap", "reason": "redaction_undecodable", "dropped_packets": 0,
                                    "from": entry["started_at"], "to": entry["ended_at"]})
                    continue
                sha256, length = await asyncio.to_thread(hash_file, path)
                try:
                    await self.store.add_file(base + entry["file"], path, sha256=sha256)
                except ItemExists:
                    await self.store.check_existing(base + entry["file"], sha256)
                size += length
                faces += int(result.get("frames_with_faces") or 0)
                entries.append({
                    "type": "segment", "seq": entry["seq"], "file": entry["file"], "sha256": sha256, "size": length,
                    "started_at": entry["started_at"], "ended_at": entry["ended_at"],
                    "keyframe_start": bool(result.get("keyframe_start")), "packets": int(result.get("packets") or 0),
                    "recovered": False, "source_sha256": entry["sha256"],
                })
            else:
                entries.append({k: v for k, v in entry.items() if k not in ("index", "prev", "hash")})
        chained: list[dict[str, Any]] = []
        head = mf.GENESIS
        for index, entry in enumerate(entries):
            chained.append(mf.chain(entry, index, head))
            head = chained[-1]["hash"]
        if not mf.segments(chained):
            raise JobFailed("No media of the recording could be read, so there is nothing to redact.")
        for name, data in ((SOURCE_MANIFEST, source.body), (SOURCE_SIGNATURE, source.signature)):
            try:
                await self.store.add_bytes(base + name, data)
            except ItemExists:
                await self.store.check_existing(base + name, hashlib.sha256(data).hexdigest())
        async with self.db() as db:
            requester = await db.get(User, job.requested_by)
        original = source.manifest["recording"]
        made_at = self.clock()
        described = {
            **{k: original.get(k) for k in ("consultation_id", "cad_ref", "officer", "participant", "track",
                                            "started_at", "ended_at", "segment_seconds")},
            "id": rid, "status": "complete", "kind": "redacted",
            "source": {"recording_id": source.recording.id, "manifest_sha256": source.recording.manifest_sha256,
                       "manifest": SOURCE_MANIFEST, "signature": SOURCE_SIGNATURE},
            "redaction": {"operations": job.operations, "job": job.id, "reason": job.reason,
                          "requested_by": requester.username if requester else None, "made_at": rfc3339(made_at),
                          "frames_with_faces": faces, "tool": _tool()},
        }
        body = mf.build(described, chained, fingerprint(self.key.public_key()))
        body = await mf.keep(self.store, self.key, base, body, head)
        sha256 = hashlib.sha256(body).hexdigest()
        segments = mf.segments(chained)
        duration = sum(max(0.0, (_instant(e["ended_at"]) - _instant(e["started_at"])).total_seconds())
                       for e in segments)
        async with self.audit.transaction() as tx:
            finished = await tx.db.execute(
                update(RedactionJob).where(RedactionJob.id == job.id, RedactionJob.status == "running",
                                           RedactionJob.worker == self.name)
                .values(status="done", progress=1.0, eta_s=0.0, finished_at=made_at, heartbeat_at=made_at))
            if getattr(finished, "rowcount", 0) != 1:
                raise Cancelled()  # taken back meanwhile (stale): its other attempt makes the copy
            src = source.recording
            tx.db.add(Recording(
                id=rid, consultation_id=src.consultation_id, participant=src.participant,
                participant_user=src.participant_user, participant_name=src.participant_name,
                user_agent=src.user_agent, status="complete", track=src.track, started_at=src.started_at,
                ended_at=src.ended_at, duration_s=duration, segments=len(segments), head_hash=head,
                manifest_sha256=sha256, classification=src.classification, kind="redacted",
                source_recording_id=src.id, source_manifest_sha256=src.manifest_sha256,
                redaction=described["redaction"]))
            for entry in chained:
                tx.db.add(RecordingEntry(recording_id=rid, seq=entry["index"], kind=entry["type"], entry=entry))
            tx.db.add(EvidenceItem(id=rid, kind="recording", consultation_id=src.consultation_id, prefix=base,
                                   created_at=made_at, sha256=sha256, size=size))
            tx.add(Actor.system(), "recording.redact", f"recording:{rid}", consultation_id=src.consultation_id,
                   reason=job.reason,
                   details={"job": job.id, "source": src.id, "source_manifest_sha256": src.manifest_sha256,
                            "manifest_sha256": sha256, "operations": job.operations,
                            "requested_by": described["redaction"]["requested_by"], "segments": len(segments)})
        log.info("redaction %s done: recording %s (copy of %s)", job.id, rid, source.recording.id)


async def copies_of(db: Any, recording_id: str) -> list[Recording]:
    """The redacted copies made from a recording, newest first."""
    rows = await db.scalars(select(Recording).where(Recording.source_recording_id == recording_id)
                            .order_by(Recording.id))
    copies = list(rows)
    copies.sort(key=lambda r: (r.redaction or {}).get("made_at") or "", reverse=True)
    return copies


async def duration_of(db: Any, recording: Recording) -> float:
    """Seconds from a sealed recording's start to the last instant it holds (what a
    range may reach): its end entry, or its last segment's end when that comes a few
    milliseconds later (a segment ends where its last frame does)."""
    last = recording.started_at
    for entry in await entries_of(db, recording.id):
        for name in ("ended_at", "to", "at"):
            if isinstance(entry.get(name), str):
                last = max(last, _instant(entry[name]))
    return (last - recording.started_at).total_seconds()


def _tool() -> dict[str, str]:
    import av

    return {"evr": __version__, "av": str(av.__version__), "video": "VP8, decoded, redacted and encoded again",
            "audio": "Opus: copied unchanged, muted ranges replaced by silence of the same length"}


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _ms(value: str, start: datetime) -> int:
    return max(0, round((_instant(value) - start).total_seconds() * 1000))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and abs(value) < 1e12


def _message(line: bytes) -> dict[str, Any]:
    try:
        parsed = parse_json(line.decode("utf-8", "replace").strip() or "{}")
    except Exception:  # noqa: BLE001 - a line that is not ours is ignored
        return {}
    return parsed if isinstance(parsed, dict) else {}


async def _drain(stream: asyncio.StreamReader) -> None:
    """Read the media process's standard error to its end, so that it never blocks on
    a full pipe; what it says is not kept (it may name what it was working on)."""
    while await stream.read(1 << 16):
        pass


def _fresh_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "in").mkdir(parents=True, mode=0o700)
    (folder / "out").mkdir(mode=0o700)


def _lower_priority() -> None:
    os.nice(10)
