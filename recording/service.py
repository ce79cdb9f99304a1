"""Recordings: start one per participant, store each segment as it closes, chain the
entries, seal the manifest at the end, and recover what a crash left behind.

Metadata trouble never loses a recording. A participant's media goes to the spool
(``DATA/spool/recordings/<id>/``) from its first frame, next to ``recording.json``
(which consultation and participant it belongs to), while the database row is made
by a task the service owns (:class:`evr.tasks.TaskSet`): a row that cannot be written
with its metadata (a ``User-Agent`` that does not encode, say) is written without
it, and a database that refuses altogether leaves the spool for the next start.
Each state change (capture, seal, termination, quarantine) commits with its audit
entry in one transaction. At start, :meth:`Recordings.recover` closes every recording
left open and deals with every spool folder that has no open recording, so no
plaintext media stays in the spool unlisted (see :meth:`Recordings.recover`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evr.audit import Actor, AuditLog
from evr.config import Settings
from evr.db import Consultation, EvidenceItem, Recording, RecordingEntry, User
from evr.evidence import EvidenceStore, ItemExists
from evr.keys import fingerprint, write_private
from evr.roles import PARTICIPANT_ROLES
from evr.tasks import TaskSet
from evr.text import clean_header
from evr.timeutil import Clock, rfc3339

from . import manifest
from .recorder import End, Event, Gap, Recorder, SegmentClosed, hash_file

if TYPE_CHECKING:
    from evr.media.bridge import Participant

log = logging.getLogger(__name__)


def prefix(consultation_id: str, recording_id: str) -> str:
    return f"recordings/{consultation_id}/{recording_id}/"


async def entries_of(db: AsyncSession, recording_id: str) -> list[dict[str, Any]]:
    """A recording's manifest entries so far, in order."""
    query = select(RecordingEntry.entry).where(RecordingEntry.recording_id == recording_id)
    return list(await db.scalars(query.order_by(RecordingEntry.seq)))


#: The file in a recording's spool folder that says whose media it holds.
SPOOL_METADATA = "recording.json"
#: Where media that belongs to no recording is kept, encrypted, in the evidence store.
QUARANTINE_PREFIX = "quarantine/spool/"


@dataclass
class Active:
    """What the service keeps of a recording in progress."""

    id: str
    consultation_id: str
    started_at: datetime
    #: Its spool folder (in the spool of the process that records it).
    directory: Path
    recorder: Optional[Recorder] = None
    index: int = 0
    head: str = manifest.GENESIS
    created: asyncio.Event = field(default_factory=asyncio.Event)
    #: Whether its database row exists (set before ``created``).
    stored: bool = False


class Recordings:
    #: Pauses between further attempts to write a recording's row, once it failed
    #: with its metadata and then without it. After the last, the spool waits for
    #: the next start (:meth:`recover`).
    create_retry_delays: tuple[float, ...] = (0.5, 2.0, 5.0)

    def __init__(self, settings: Settings, clock: Clock, db: async_sessionmaker, store: EvidenceStore,
                 key: Ed25519PrivateKey, audit: AuditLog, spool: Optional[Path] = None) -> None:
        self.settings = settings
        self.clock = clock
        self.db = db
        self.store = store
        self.key = key
        self.audit = audit
        #: Where this process spools what it records: ``DATA/spool/recordings``, or a
        #: media worker's own (:func:`worker_spool`).
        self.spool = spool or settings.data_dir / "spool" / "recordings"
        self.active: dict[str, Active] = {}
        self.tasks = TaskSet("recordings")

    # -- capture ---------------------------------------------------------------

    def sink(self, consultation_id: str, participant: "Participant", track: str = "camera") -> Recorder:
        """The bridge's :data:`~evr.media.bridge.SinkFactory`: each of a participant's
        tracks (``camera``: microphone and camera; ``screen``: a screen they share) is
        recorded from its first forwarded frame, through a :class:`Recorder` of its own.
        A guest's recording names them (staff are named by their account)."""
        feed = "screen" if track == "screen" else "video"
        return self.start(consultation_id, participant.role, participant.user_id, participant.user_agent,
                          lambda: participant.request_keyframe(feed), track=track,
                          name=participant.name if participant.is_guest else None)

    def start(self, consultation_id: str, role: str, user_id: Optional[int], user_agent: Optional[str],
              request_keyframe: Callable[[], None], track: str = "camera", name: Optional[str] = None) -> Recorder:
        """Begin a participant's recording (called on its first frame, on the event loop:
        nothing here touches the disk). The owned ``_create`` task writes the spool
        folder's metadata (whose media it holds, so a recording whose row is never made
        is still recovered at the next start), then the row."""
        rid = str(uuid.uuid4())
        active = self.active[rid] = Active(rid, consultation_id, self.clock(), self.spool / rid)
        user_agent = clean_header(user_agent)  # the socket cleaned it; a caller of start() may not have
        recorder = Recorder(rid, active.directory, lambda event: self._on_event(active, event), request_keyframe,
                            self.settings.recording_segment_seconds, self.settings.recording_queue_packets,
                            kinds=("video",) if track == "screen" else ("video", "audio"))
        active.recorder = recorder
        self.tasks.spawn(self._create(active, role, user_id, user_agent, track, clean_header(name, 200)),
                         f"create recording {rid}")
        return recorder

    async def _create(self, active: Active, role: str, user_id: Optional[int], user_agent: Optional[str],
                      track: str = "camera", name: Optional[str] = None) -> None:
        """Write the spool folder's metadata, then the recording's row and its
        ``recording.capture`` entry, retrying a few times; the media is spooled
        meanwhile and never dropped (its text was cleaned where it came in, so only a
        fault of the database or the audit log can stop it)."""
        retries = iter(self.create_retry_delays)
        try:
            await asyncio.to_thread(_write_spool_metadata, active.directory, {
                "recording_id": active.id, "consultation_id": active.consultation_id, "participant": role,
                "user_id": user_id, "user_agent": user_agent, "started_at": rfc3339(active.started_at),
                "track": track, "name": name,
            })
            while True:
                try:
                    await self._insert(active, role, user_id, user_agent, track=track, name=name)
                    active.stored = True
                    log.info("recording %s started (consultation=%s participant=%s)",
                             active.id, active.consultation_id, role)
                    return
                except Exception as exc:  # noqa: BLE001 - the media must still be recorded
                    delay = next(retries, None)
                    if delay is None:
                        log.error("recording %s: its row could not be written (%s); the media stays in the "
                                  "spool and is recovered at the next start", active.id, _short(exc))
                        return
                    log.warning("recording %s: its row could not be written (%s); again in %.1f s",
                                active.id, _short(exc), delay)
                    await asyncio.sleep(delay)
        finally:
            active.created.set()

    async def _insert(self, active: Active, role: str, user_id: Optional[int], user_agent: Optional[str],
                      recovered: bool = False, track: str = "camera", name: Optional[str] = None) -> None:
        async with self.audit.transaction() as tx:
            user = await tx.db.get(User, user_id) if user_id is not None else None
            username = user.username if user is not None else None
            tx.db.add(Recording(
                id=active.id, consultation_id=active.consultation_id, participant=role,
                participant_user=username, user_agent=user_agent, status="recording", track=track,
                participant_name=name,
                started_at=active.started_at, head_hash=manifest.GENESIS, segments=0, duration_s=0.0,
                classification="non_evidential",
            ))
            tx.db.add(EvidenceItem(id=active.id, kind="recording", consultation_id=active.consultation_id,
                                   prefix=prefix(active.consultation_id, active.id), created_at=active.started_at,
                                   size=0))
            details: dict[str, Any] = {"participant": role, "user": username, "track": track}
            if recovered:
                details["recovered_from_spool"] = True
            tx.add(Actor.system(), "recording.capture", f"recording:{active.id}",
                   consultation_id=active.consultation_id, details=details)

    async def _on_event(self, active: Active, event: Event) -> None:
        await active.created.wait()
        if not active.stored:  # no row (yet): the spool keeps everything for recover()
            if isinstance(event, End):
                self.active.pop(active.id, None)
                log.error("recording %s ended without a database row; its media stays in the spool for "
                          "the next start", active.id)
            return
        if isinstance(event, SegmentClosed):
            await self._store_segment(active, event)
        elif isinstance(event, Gap):
            await self._append(active, {
                "type": "gap", "reason": event.reason, "dropped_packets": event.dropped_packets,
                "from": rfc3339(self._wall(active, event.start_s)), "to": rfc3339(self._wall(active, event.end_s)),
            })
        elif isinstance(event, End):
            await self._end(active, event.reason, self._wall(active, event.at_s), "complete")

    @staticmethod
    def _wall(active: Active, seconds: float) -> datetime:
        return active.started_at + timedelta(seconds=seconds)

    async def _store_segment(self, active: Active, event: SegmentClosed) -> None:
        key = prefix(active.consultation_id, active.id) + event.path.name
        try:
            await self.store.add_file(key, event.path, sha256=event.sha256)
        except ItemExists:  # stored before a crash, entry not yet written: the bytes must match
            await self.store.check_existing(key, event.sha256)
        entry = {
            "type": "segment", "seq": event.seq, "file": event.path.name, "sha256": event.sha256, "size": event.size,
            "started_at": rfc3339(self._wall(active, event.start_s)),
            "ended_at": rfc3339(self._wall(active, event.end_s)),
            "keyframe_start": event.keyframe_start, "packets": event.packets, "recovered": event.recovered,
        }
        await self._append(active, entry, duration=max(0.0, event.end_s - event.start_s))
        await asyncio.to_thread(event.path.unlink, True)

    async def _append(self, active: Active, entry: dict[str, Any], duration: float = 0.0) -> dict[str, Any]:
        linked = manifest.chain(entry, active.index, active.head)
        async with self.db() as session:
            session.add(RecordingEntry(recording_id=active.id, seq=active.index, kind=entry["type"], entry=linked))
            recording = await session.get(Recording, active.id)
            assert recording is not None
            recording.head_hash = linked["hash"]
            if entry["type"] == "segment":
                recording.segments += 1
                recording.duration_s += duration
            await session.commit()
        active.index += 1
        active.head = linked["hash"]
        return linked

    async def _store_leftovers(self, active: Active, stored_seqs: set[int]) -> tuple[int, datetime]:
        """Store every segment file still in the spool that no entry holds yet (a
        segment whose storing failed, or what a crash left): (how many, latest end)."""
        directory = active.directory
        leftovers = sorted(directory.glob("seg-*.webm")) if directory.is_dir() else []
        count, last_end = 0, active.started_at
        for path in leftovers:
            seq = int(path.stem.split("-")[1])
            if seq in stored_seqs:
                path.unlink(missing_ok=True)
                continue
            salvaged = await asyncio.to_thread(_salvage, path, seq)
            if salvaged is None:
                log.warning("recording %s: %s held no media; discarded", active.id, path.name)
                path.unlink(missing_ok=True)
                continue
            await self._store_segment(active, salvaged)
            stored_seqs.add(seq)
            count += 1
            last_end = max(last_end, self._wall(active, salvaged.end_s))
        return count, last_end

    async def _end(self, active: Active, reason: str, at: datetime, status: str,
                   details: Optional[dict[str, Any]] = None) -> None:
        async with self.db() as db:
            entries = await entries_of(db, active.id)
        stored_seqs = {e["seq"] for e in entries if e["type"] == "segment"}
        stored_late, _ = await self._store_leftovers(active, stored_seqs)
        if stored_late:
            log.warning("recording %s: %d segment(s) stored late, at the end", active.id, stored_late)
        await self._append(active, {"type": "end", "reason": reason, "at": rfc3339(at)})
        await self._seal(active, reason, status, details)

    async def _seal(self, active: Active, reason: str, status: str, details: Optional[dict[str, Any]] = None) -> None:
        """Sign and store the manifest (entries up to the end entry), then mark the
        recording sealed with its audit entry (``recording.seal``, or
        ``recording.terminate`` when a restart ended it) in one transaction."""
        async with self.db() as db:
            recording = await db.get(Recording, active.id)
            assert recording is not None
            consultation = await db.get(Consultation, active.consultation_id)
            assert consultation is not None
            officer = await db.get(User, consultation.created_by)
            entries = await entries_of(db, active.id)
        at = entries[-1]["at"]
        body = manifest.build({
            "id": recording.id,
            "consultation_id": consultation.id,
            "cad_ref": consultation.cad_ref,
            "officer": officer.username if officer else None,
            "participant": {"role": recording.participant, "user": recording.participant_user,
                            "name": recording.participant_name, "user_agent": recording.user_agent},
            "track": recording.track,
            "started_at": rfc3339(recording.started_at),
            "ended_at": at,
            "status": status,
            "segment_seconds": self.settings.recording_segment_seconds,
        }, entries, fingerprint(self.key.public_key()))
        body = await manifest.keep(self.store, self.key, prefix(active.consultation_id, active.id), body,
                                   entries[-1]["hash"])
        kept = manifest.parse(body)["recording"]
        sha256 = hashlib.sha256(body).hexdigest()
        size = sum(e["size"] for e in entries if e["type"] == "segment")
        async with self.audit.transaction() as tx:
            row = await tx.db.get(Recording, active.id)
            assert row is not None
            row.status = kept["status"]
            row.ended_at = datetime.fromisoformat(kept["ended_at"].replace("Z", "+00:00"))
            row.manifest_sha256 = sha256
            item = await tx.db.get(EvidenceItem, active.id)
            if item is not None:
                item.sha256, item.size = sha256, size
            action = "recording.terminate" if kept["status"] == "terminated" else "recording.seal"
            tx.add(Actor.system(), action, f"recording:{active.id}", consultation_id=active.consultation_id,
                   details={"reason": reason, "status": kept["status"], "segments": len(manifest.segments(entries)),
                            "manifest_sha256": sha256, **(details or {})})
        self.active.pop(active.id, None)
        directory = active.directory
        if any(directory.glob("seg-*.webm")):
            log.error("recording %s: segment files remain in the spool after sealing; kept for the next start",
                      active.id)
        else:
            await asyncio.to_thread(shutil.rmtree, directory, True)
        log.info("recording %s %s (%s)", active.id, kept["status"], reason)

    # -- crash recovery ------------------------------------------------------------

    def spools(self) -> list[Path]:
        """Every spool of this data directory: the serving process's and each media
        worker's (:func:`worker_spool`)."""
        workers = self.settings.data_dir / "spool" / "workers"
        found = sorted(p / "recordings" for p in workers.iterdir()) if workers.is_dir() else []
        return [self.spool, *(p for p in found if p != self.spool)]

    async def recover(self, spool: Optional[Path] = None, local_only: bool = False) -> int:
        """Close every recording a crash left open: store what its last segments hold,
        add a termination entry, seal the manifest. Returns how many were closed.

        At start (no ``spool``) that is every open recording, with every spool of the
        data directory; ``local_only`` (a node of a cluster: other nodes are recording
        now), only those spooled in them. Given the ``spool`` of one media worker that
        died while others run on, only the recordings spooled there.

        Then every spool folder without an open recording is dealt with, so that no
        participant's media is left as plaintext in the spool outside the evidence
        store, retention and the audit log:

        - its ``recording.json`` names a consultation that exists (the row was never
          written: a metadata fault, a database outage, a crash before the commit):
          the row is made now (``recording.capture``, ``recovered_from_spool``) and the
          recording salvaged and sealed as ``terminated`` like any other left open.
          This keeps the evidence best: it becomes an ordinary recording of its
          consultation (listed, playable, exportable, verifiable, under retention).
        - otherwise (no or unreadable metadata, an unknown consultation, files left
          beside an already sealed recording that it does not hold): every file is
          moved into the evidence store under ``quarantine/spool/`` (encrypted at
          rest, add-only, never overwritten; Object Lock on S3), a
          ``recording.quarantine`` audit entry lists each file with its SHA-256 and
          size, and a warning is logged. Encrypted in the store rather than in a
          private folder of the data directory: a folder would leave plaintext media
          on disk, and could be emptied without a trace.
        """
        spools = [spool] if spool is not None else self.spools()
        async with self.db() as db:
            open_ = list(await db.scalars(select(Recording).where(Recording.status == "recording")))
        closing = []
        for recording in open_:
            directory = next((s / recording.id for s in spools if (s / recording.id).is_dir()), None)
            if directory is None and (spool is not None or local_only):
                continue  # spooled by a process (or a node) that runs on
            closing.append(recording.id)
            try:
                await self._recover_one(recording, directory or self.spool / recording.id)
            except Exception:  # noqa: BLE001 - the others still get closed; this one's spool stays
                log.exception("recording %s could not be closed; its spool is kept", recording.id)
        for each in spools:
            await self._recover_spool(each, {r.id for r in open_})
        return len(closing)

    async def _recover_one(self, recording: Recording, directory: Path) -> None:
        async with self.db() as db:
            entries = await entries_of(db, recording.id)
        active = Active(recording.id, recording.consultation_id, recording.started_at, directory)
        active.created.set()
        active.stored = True
        active.index = len(entries)
        active.head = entries[-1]["hash"] if entries else manifest.GENESIS
        if entries and entries[-1]["type"] == "end":  # ended, but the seal did not commit
            status = "terminated" if entries[-1]["reason"] == "server_restart" else "complete"
            await self._seal(active, entries[-1]["reason"], status)
            return
        stored_seqs = {e["seq"] for e in entries if e["type"] == "segment"}
        last_end = recording.started_at
        for e in entries:
            for k in ("ended_at", "to", "at"):
                if e.get(k):
                    last_end = max(last_end, datetime.fromisoformat(e[k].replace("Z", "+00:00")))
        salvaged, salvaged_end = await self._store_leftovers(active, stored_seqs)
        last_end = max(last_end, salvaged_end)
        await self._append(active, {"type": "end", "reason": "server_restart", "at": rfc3339(last_end)})
        await self._seal(active, "server_restart", "terminated", {"recovered_segments": salvaged})

    async def _recover_spool(self, spool: Path, handled: set[str]) -> None:
        if not spool.is_dir():
            return
        for path in sorted(spool.iterdir()):
            if path.name in handled:
                continue
            try:
                await self._recover_orphan(spool, path)
            except Exception:  # noqa: BLE001 - left where it is, and said loudly
                log.exception("spool entry %s could not be recovered or quarantined; it is left in place",
                              clean_header(path.name))

    async def _recover_orphan(self, spool: Path, path: Path) -> None:
        async with self.db() as db:
            row = await db.get(Recording, path.name) if path.is_dir() else None
            meta = _read_spool_metadata(path) if row is None and path.is_dir() else None
            consultation = await db.get(Consultation, meta["consultation_id"]) if meta else None
        if row is not None:  # sealed already: drop what it holds, quarantine the rest
            async with self.db() as db:
                held = {(e["file"], e["sha256"]) for e in await entries_of(db, row.id) if e["type"] == "segment"}
            for seg in sorted(path.glob("seg-*.webm")):
                if (seg.name, (await asyncio.to_thread(hash_file, seg))[0]) in held:
                    seg.unlink()
            (path / SPOOL_METADATA).unlink(missing_ok=True)
            if any(path.iterdir()):
                await self._quarantine(spool, path, f"files beside the sealed recording {row.id} that it does not hold")
            else:
                path.rmdir()
            return
        if meta is not None and consultation is not None:
            active = Active(path.name, consultation.id, meta["started_at"], path)
            await self._insert(active, meta["participant"], meta.get("user_id"), clean_header(meta.get("user_agent")),
                               recovered=True, track=meta["track"], name=clean_header(meta.get("name"), 200))
            async with self.db() as db:
                recording = await db.get(Recording, path.name)
            assert recording is not None
            log.warning("recording %s: found in the spool without its row; recovered and sealed", path.name)
            await self._recover_one(recording, path)
            return
        why = ("spool metadata names no known consultation" if meta is not None
               else "no readable spool metadata (whose media it is is unknown)")
        await self._quarantine(spool, path, why)

    async def _quarantine(self, spool: Path, path: Path, why: str) -> None:
        """Move a spool entry into the store under ``quarantine/spool/``, audit-logged.

        The store cannot share the audit log's transaction, so the files go first and
        the entry after; the keys come from the entry's name and content, so a start
        that stopped in between stores the same files under the same keys again (checked
        to be the same bytes) and then writes the entry, instead of leaving unlogged
        copies under new keys."""
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        hashed = [await asyncio.to_thread(hash_file, file) for file in files]
        batch_id = hashlib.sha256(path.name.encode("utf-8", "surrogateescape"))
        for sha256, _ in hashed:
            batch_id.update(sha256.encode())
        batch = f"{QUARANTINE_PREFIX}{batch_id.hexdigest()[:32]}/"
        report = []
        for n, (file, (sha256, size)) in enumerate(zip(files, hashed, strict=True), 1):
            key = f"{batch}{n:04d}.bin"
            try:
                await self.store.add_file(key, file, sha256=sha256)
            except ItemExists:
                await self.store.check_existing(key, sha256)
            name = file.relative_to(spool).as_posix()
            report.append({"file": clean_header(name, 256), "key": key, "sha256": sha256, "size": size})
        name = clean_header(path.name, 100) or "?"
        async with self.audit.transaction() as tx:
            tx.add(Actor.system(), "recording.quarantine", f"spool:{name}",
                   reason=why, details={"stored_under": batch, "files": report})
        await asyncio.to_thread(shutil.rmtree if path.is_dir() else Path.unlink, path)
        log.warning("spool entry %s quarantined (%s): %d file(s) moved, encrypted, to %s in the evidence store",
                    name, why, len(report), batch)

    async def shutdown(self) -> None:
        for active in list(self.active.values()):
            if active.recorder is not None:
                await active.recorder.on_close("server_shutdown")
        await self.tasks.close()


def _write_spool_metadata(directory: Path, meta: dict[str, Any]) -> None:
    """Say in the spool folder whose media it holds (readable by the service alone)."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(directory / SPOOL_METADATA, json.dumps(meta).encode())
    except OSError:  # the writer will meet the same disk; its failures are reported there
        log.exception("recording %s: could not write its spool metadata", meta.get("recording_id"))


def _read_spool_metadata(directory: Path) -> Optional[dict[str, Any]]:
    """``recording.json`` of a spool folder, checked; None when missing or unusable."""
    try:
        meta = json.loads((directory / SPOOL_METADATA).read_text())
        uuid.UUID(meta["recording_id"])
        uuid.UUID(meta["consultation_id"])
        started = datetime.fromisoformat(meta["started_at"].replace("Z", "+00:00"))
        if meta["recording_id"] != directory.name or meta["participant"] not in PARTICIPANT_ROLES:
            return None
        meta["track"] = meta.get("track", "camera")  # spooled before screens were recorded
        if meta["track"] not in ("camera", "screen") or not isinstance(meta.get("name"), (str, type(None))):
            return None
        user_id, user_agent = meta.get("user_id"), meta.get("user_agent")
        if (user_id is not None and not isinstance(user_id, int)) or not isinstance(user_agent, (str, type(None))):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return {**meta, "started_at": started}


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]


def _salvage(path: Path, seq: int) -> Optional[SegmentClosed]:
    """What a crash left of a segment: its packets' span, if any can be read."""
    import av

    first: Optional[float] = None
    last = 0.0
    packets = 0
    keyframe_start = False
    try:
        with av.open(str(path)) as container:
            for packet in container.demux():
                if packet.pts is None or packet.size == 0:
                    continue
                t = float(packet.pts * packet.time_base)
                if first is None:
                    first = t
                    keyframe_start = packet.stream.type == "video" and packet.is_keyframe
                last = max(last, t)
                packets += 1
    except Exception as exc:  # noqa: BLE001 - a torn file: keep what was read
        log.info("salvaging %s: read stopped: %s", path, exc)
    if not packets or first is None:
        return None
    sha256, size = hash_file(path)
    return SegmentClosed(seq, path, sha256, size, first, last, keyframe_start, packets, recovered=True)


def worker_spool(settings: Settings, index: int) -> Path:
    """The spool of media worker ``index`` (``evr serve --workers``): each worker
    records into its own, so one that dies is recovered alone while the others run."""
    return settings.data_dir / "spool" / "workers" / str(index) / "recordings"
