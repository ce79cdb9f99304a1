"""Recordings: start one per participant, store each segment as it closes, chain the
entries, seal the manifest at the end, and recover what a crash left behind."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evr.audit import Actor, AuditLog
from evr.config import Settings
from evr.db import Consultation, EvidenceItem, Recording, RecordingEntry, User
from evr.evidence import EvidenceStore, ItemExists
from evr.keys import fingerprint
from evr.timeutil import Clock, rfc3339

from . import manifest
from .recorder import End, Event, Gap, Recorder, SegmentClosed, hash_file

log = logging.getLogger(__name__)


def prefix(consultation_id: str, recording_id: str) -> str:
    return f"recordings/{consultation_id}/{recording_id}/"


async def entries_of(db: AsyncSession, recording_id: str) -> list[dict[str, Any]]:
    """A recording's manifest entries so far, in order."""
    query = select(RecordingEntry.entry).where(RecordingEntry.recording_id == recording_id)
    return list(await db.scalars(query.order_by(RecordingEntry.seq)))


@dataclass
class Active:
    """What the service keeps of a recording in progress."""

    id: str
    consultation_id: str
    started_at: datetime
    recorder: Optional[Recorder] = None
    index: int = 0
    head: str = manifest.GENESIS
    created: asyncio.Event = field(default_factory=asyncio.Event)


class Recordings:
    def __init__(self, settings: Settings, clock: Clock, db: async_sessionmaker, store: EvidenceStore,
                 key: Ed25519PrivateKey, audit: AuditLog) -> None:
        self.settings = settings
        self.clock = clock
        self.db = db
        self.store = store
        self.key = key
        self.audit = audit
        self.spool = settings.data_dir / "spool" / "recordings"
        self.active: dict[str, Active] = {}

    # -- capture ---------------------------------------------------------------

    def start(self, consultation_id: str, role: str, user_id: Optional[int], user_agent: Optional[str],
              request_keyframe: Callable[[], None]) -> Recorder:
        """Begin a participant's recording (called on its first frame, on the event loop)."""
        rid = str(uuid.uuid4())
        active = self.active[rid] = Active(rid, consultation_id, self.clock())
        recorder = Recorder(rid, self.spool / rid, lambda event: self._on_event(active, event), request_keyframe,
                            self.settings.recording_segment_seconds, self.settings.recording_queue_packets)
        active.recorder = recorder
        asyncio.ensure_future(self._create(active, role, user_id, user_agent))
        return recorder

    async def _create(self, active: Active, role: str, user_id: Optional[int], user_agent: Optional[str]) -> None:
        try:
            async with self.db() as db:
                username = (await db.get(User, user_id)).username if user_id is not None else None
                db.add(Recording(
                    id=active.id, consultation_id=active.consultation_id, participant=role,
                    participant_user=username, user_agent=(user_agent or "")[:512] or None, status="recording",
                    started_at=active.started_at, head_hash=manifest.GENESIS, segments=0, duration_s=0.0,
                    classification="non_evidential",
                ))
                db.add(EvidenceItem(id=active.id, kind="recording", consultation_id=active.consultation_id,
                                    prefix=prefix(active.consultation_id, active.id), created_at=active.started_at,
                                    size=0))
                await db.commit()
            await self.audit.record(Actor.system(), "recording.capture", f"recording:{active.id}",
                                    consultation_id=active.consultation_id,
                                    details={"participant": role, "user": username})
            log.info("recording %s started (consultation=%s participant=%s)", active.id, active.consultation_id, role)
        finally:
            active.created.set()

    async def _on_event(self, active: Active, event: Event) -> None:
        await active.created.wait()
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
            stored = await self.store.read_bytes(key)
            if hashlib.sha256(stored).hexdigest() != event.sha256:
                raise
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

    async def _end(self, active: Active, reason: str, at: datetime, status: str) -> None:
        await self._append(active, {"type": "end", "reason": reason, "at": rfc3339(at)})
        async with self.db() as db:
            recording = await db.get(Recording, active.id)
            consultation = await db.get(Consultation, active.consultation_id)
            officer = await db.get(User, consultation.created_by) if consultation else None
            entries = await entries_of(db, active.id)
            assert recording is not None and consultation is not None
            recording.status = status
            recording.ended_at = at
            body = manifest.build({
                "id": recording.id,
                "consultation_id": consultation.id,
                "cad_ref": consultation.cad_ref,
                "officer": officer.username if officer else None,
                "participant": {"role": recording.participant, "user": recording.participant_user,
                                "user_agent": recording.user_agent},
                "started_at": rfc3339(recording.started_at),
                "ended_at": rfc3339(at),
                "status": status,
                "segment_seconds": self.settings.recording_segment_seconds,
            }, entries, fingerprint(self.key.public_key()))
            base = prefix(active.consultation_id, active.id)
            stored = await self.store.add_bytes(base + manifest.MANIFEST, body)
            await self.store.add_bytes(base + manifest.SIGNATURE, manifest.sign(self.key, body))
            recording.manifest_sha256 = stored.sha256
            item = await db.get(EvidenceItem, active.id)
            if item is not None:
                item.sha256 = stored.sha256
                item.size = sum(e["size"] for e in entries if e["type"] == "segment")
            await db.commit()
        self.active.pop(active.id, None)
        await asyncio.to_thread(shutil.rmtree, self.spool / active.id, True)
        log.info("recording %s %s (%s)", active.id, status, reason)

    # -- crash recovery ------------------------------------------------------------

    async def recover(self) -> int:
        """Close every recording a crash left open: store what its last segments hold,
        add a termination entry, seal the manifest. Returns how many were closed."""
        async with self.db() as db:
            open_ = list(await db.scalars(select(Recording).where(Recording.status == "recording")))
        for recording in open_:
            await self._recover_one(recording)
        return len(open_)

    async def _recover_one(self, recording: Recording) -> None:
        async with self.db() as db:
            entries = await entries_of(db, recording.id)
        active = Active(recording.id, recording.consultation_id, recording.started_at)
        active.created.set()
        active.index = len(entries)
        active.head = entries[-1]["hash"] if entries else manifest.GENESIS
        stored_seqs = {e["seq"] for e in entries if e["type"] == "segment"}
        last_end = recording.started_at
        for e in entries:
            for k in ("ended_at", "to", "at"):
                if e.get(k):
                    last_end = max(last_end, datetime.fromisoformat(e[k].replace("Z", "+00:00")))
        directory = self.spool / recording.id
        leftovers = sorted(directory.glob("seg-*.webm")) if directory.is_dir() else []
        for path in leftovers:
            seq = int(path.stem.split("-")[1])
            if seq in stored_seqs:
                path.unlink(missing_ok=True)
                continue
            salvaged = await asyncio.to_thread(_salvage, path, seq)
            if salvaged is None:
                log.warning("recording %s: %s held no media; discarded", recording.id, path.name)
                path.unlink(missing_ok=True)
                continue
            await self._store_segment(active, salvaged)
            last_end = max(last_end, self._wall(active, salvaged.end_s))
        await self._end(active, "server_restart", last_end, "terminated")
        await self.audit.record(Actor.system(), "recording.terminate", f"recording:{recording.id}",
                                consultation_id=recording.consultation_id,
                                details={"reason": "server_restart", "recovered_segments": len(leftovers)})

    async def shutdown(self) -> None:
        for active in list(self.active.values()):
            if active.recorder is not None:
                await active.recorder.finish("server_shutdown")


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
