"""Recording under hostile metadata and faults (issue 11, findings 2 and 3).

A participant must not be able to stop their own recording with a header, media must
never be left as plaintext in the spool without a row, and every state change of a
recording (capture, seal, classification) commits with its audit entry or not at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

import aiohttp.http_writer
import pytest
from conftest import eventually
from sqlalchemy import select
from test_recording_media import synthetic_frames

from evr.db import AuditEntry, EvidenceItem, Recording
from evr.http import DB, HUB, RECORDINGS, STORE
from evr.recording.recorder import Packet, SegmentWriter
from evr.recording.service import Recordings
from evr.recording.verify import StoredPackage, verify


@pytest.fixture
def settings(settings):
    settings.recording_segment_seconds = 1.0
    return settings


@pytest.fixture
def raw_header_bytes(monkeypatch):
    """Let the test's HTTP client put bytes that are not UTF-8 in a header, as any
    client on the network can: a header value's lone surrogates (``"\\udcff"``) go on
    the wire as the raw byte (0xFF), which aiohttp's server reads back as the same
    lone surrogate."""
    def serialize(status_line, headers):
        lines = [status_line, *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")

    monkeypatch.setattr(aiohttp.http_writer, "_serialize_headers", serialize)


async def rows(server, model, **where):
    async with server.app[DB]() as db:
        query = select(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return list(await db.scalars(query))


async def actions(server, object_):
    return [e.action for e in await rows(server, AuditEntry, object=object_)]


async def media_spooled(server, participants: int = 2) -> None:
    """Wait until media reached the recorders: each participant's spool folder holds a segment."""
    spool = server.app[RECORDINGS].spool

    def recorded() -> list[str]:
        folders = [p for p in spool.iterdir() if p.is_dir()] if spool.is_dir() else []
        return [p.name for p in folders if any(p.glob("seg-*.webm"))]

    await eventually(recorded, lambda found: len(found) >= participants,
                     what=f"a spooled segment for each of {participants} participants")


async def test_a_user_agent_that_is_not_utf8_is_still_recorded(link, call, server, raw_header_bytes):
    opened = await link()
    victim = call.client(opened.phone.session, opened.ws_url, headers={"User-Agent": "Phone/1.0 \udcff\udcfe(x)"})
    console = call.client(opened.officer.client.session, opened.officer.ws_url(opened.id))
    await victim.join()
    await console.join()
    await console.wait_media(audio=20, video=15)
    await victim.wait_for(lambda m: m["type"] == "state" and m["recording"] is True)
    await media_spooled(server)
    assert (await opened.officer.post(f"/api/consultations/{opened.id}/close")).status == 200

    recorded = await rows(server, Recording, consultation_id=opened.id, participant="victim")
    assert len(recorded) == 1, "the victim was not recorded"
    recording = recorded[0]
    assert recording.status == "complete" and recording.segments >= 1
    # What could be kept of the header is kept, made safe; nothing was refused.
    assert recording.user_agent == "Phone/1.0 \ufffd\ufffd(x)"
    assert "recording.capture" in await actions(server, f"recording:{recording.id}")
    report = await verify(StoredPackage(server.app[STORE], f"recordings/{opened.id}/{recording.id}/"),
                          server.app[RECORDINGS].key.public_key())
    assert report.segments == recording.segments
    spool = server.app[RECORDINGS].spool
    assert not (spool / recording.id).exists(), "plaintext media left in the spool"


def write_segment(directory, seconds: float = 1.5) -> bytes:
    """A real WebM segment of VP8 and Opus, as the writer thread makes them."""
    writer = SegmentWriter(directory, lambda event: None)
    frames = synthetic_frames(seconds)
    t0 = frames[0][1].arrival
    for kind, frame in frames:
        writer.write(Packet(kind, frame.data, int((frame.arrival - t0) * 1000), frame.is_keyframe))
    writer.close_segment()
    return (directory / "seg-000001.webm").read_bytes()


async def test_an_orphan_spool_folder_with_its_metadata_becomes_a_sealed_recording(link, server):
    """A crash (or a database outage) between the first frame and the row: at start
    the folder's recording is made, salvaged and sealed, never left in the spool."""
    opened = await link()
    service = server.app[RECORDINGS]
    rid = str(uuid.uuid4())
    folder = service.spool / rid
    folder.mkdir(parents=True)
    (folder / "recording.json").write_text(json.dumps({
        "recording_id": rid, "consultation_id": opened.id, "participant": "victim", "user_id": None,
        "user_agent": "Phone", "started_at": "2026-11-30T10:00:00.000000Z"}))
    media = await asyncio.to_thread(write_segment, folder)

    await service.recover()  # what every start runs

    assert not folder.exists()
    [recording] = await rows(server, Recording, id=rid)
    assert recording.consultation_id == opened.id and recording.status == "terminated"
    assert recording.segments == 1 and recording.manifest_sha256
    base = f"recordings/{opened.id}/{rid}/"
    assert await server.app[STORE].read_bytes(base + "seg-000001.webm") == media
    report = await verify(StoredPackage(server.app[STORE], base), service.key.public_key())
    assert report.end_reason == "server_restart"
    [item] = await rows(server, EvidenceItem, id=rid)
    assert item.kind == "recording" and item.sha256 == recording.manifest_sha256  # under retention
    [capture] = await rows(server, AuditEntry, object=f"recording:{rid}", action="recording.capture")
    assert capture.details["recovered_from_spool"] is True
    assert "recording.terminate" in await actions(server, f"recording:{rid}")


async def test_an_orphan_spool_folder_nobody_can_place_is_quarantined_and_reported(server, tmp_path):
    service = server.app[RECORDINGS]
    folder = service.spool / str(uuid.uuid4())  # media, but no metadata (as before this fix)
    folder.mkdir(parents=True)
    media = await asyncio.to_thread(write_segment, folder)
    stray = service.spool / "notes.txt"
    stray.write_bytes(b"left by hand")
    unknown = service.spool / str(uuid.uuid4())  # metadata naming no known consultation
    unknown.mkdir()
    (unknown / "recording.json").write_text(json.dumps({
        "recording_id": unknown.name, "consultation_id": str(uuid.uuid4()), "participant": "victim",
        "user_id": None, "user_agent": None, "started_at": "2026-11-30T10:00:00Z"}))

    await service.recover()

    assert list(service.spool.iterdir()) == [], "something was left as plaintext in the spool"
    entries = await rows(server, AuditEntry, action="recording.quarantine")
    assert sorted(e.object for e in entries) == sorted(f"spool:{p.name}" for p in (folder, stray, unknown))
    store = server.app[STORE]
    by_file = {f["file"]: f for e in entries for f in e.details["files"]}
    kept = by_file[f"{folder.name}/seg-000001.webm"]
    assert kept["sha256"] == hashlib.sha256(media).hexdigest() and kept["size"] == len(media)
    assert kept["key"].startswith("quarantine/") and await store.read_bytes(kept["key"]) == media
    assert await store.read_bytes(by_file["notes.txt"]["key"]) == b"left by hand"
    assert all(e.reason for e in entries)  # each says why
    # Encrypted at rest: the media's bytes appear nowhere under the data directory.
    data = service.settings.data_dir
    assert not any(media[1000:3000] in p.read_bytes() for p in data.rglob("*") if p.is_file())


async def test_a_quarantine_whose_entry_failed_is_finished_under_the_same_keys(server, monkeypatch):
    """The files reach the store before their entry can be written: a start that
    stopped between the two stores them again under the same keys (no unlogged second
    copies), and the entry is written then."""
    service = server.app[RECORDINGS]
    stray = service.spool / "notes.txt"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"left by hand")
    fail_audit_of(monkeypatch, "recording.quarantine")
    await service.recover()  # logs that the entry is left in place
    first = await server.app[STORE].keys("quarantine/")
    assert len(first) == 1 and stray.exists()  # stored, not yet logged: still in the spool
    monkeypatch.undo()
    await service.recover()
    assert await server.app[STORE].keys("quarantine/") == first
    [entry] = await rows(server, AuditEntry, action="recording.quarantine")
    assert entry.details["files"][0]["key"] == first[0] and not stray.exists()


def fail_audit_of(monkeypatch, *failing: str) -> None:
    """Like the ``audit_fails`` fixture, for these actions only (the call around them
    must still be set up, and its login and joins are audited too)."""
    from evr import audit

    real = audit.Appender.add

    def add(self, actor, action, *args, **kwargs):
        entry = real(self, actor, action, *args, **kwargs)
        if action in failing:
            raise RuntimeError(f"audit write failed (test fault on {action})")
        return entry

    monkeypatch.setattr(audit.Appender, "add", add)


async def test_a_capture_whose_audit_entry_fails_leaves_no_row_and_loses_no_media(call, server, monkeypatch):
    """The row and its recording.capture entry commit together; while they cannot, the
    media stays in the spool, and the next start makes the recording from it."""
    monkeypatch.setattr(Recordings, "create_retry_delays", (0.05,), raising=False)
    fail_audit_of(monkeypatch, "recording.capture")
    c = await call()
    await c.console.wait_media(audio=20, video=15)
    await media_spooled(server)
    assert (await c.officer.post(f"/api/consultations/{c.id}/close")).status == 200

    assert await rows(server, Recording, consultation_id=c.id) == []
    assert await rows(server, EvidenceItem, consultation_id=c.id) == []
    spool = server.app[RECORDINGS].spool
    folders = [p for p in spool.iterdir() if p.is_dir()]
    assert len(folders) == 2 and all(list(p.glob("seg-*.webm")) for p in folders)

    monkeypatch.undo()  # the fault is gone; the service starts again (without the rooms)
    await server.app[RECORDINGS].recover()
    recorded = await rows(server, Recording, consultation_id=c.id)
    assert sorted(r.participant for r in recorded) == ["officer", "victim"]
    assert all(r.status == "terminated" and r.segments >= 1 for r in recorded)
    assert list(spool.iterdir()) == []


async def test_a_seal_whose_audit_entry_fails_is_finished_at_the_next_start(call, server, audit_fails, monkeypatch):
    c = await call()
    await c.console.wait_media(audio=20, video=15)
    await c.victim.wait_for(lambda m: m["type"] == "state" and m["recording"] is True)
    await media_spooled(server)
    audit_fails()
    await server.app[HUB].close(c.id)
    recorded = await rows(server, Recording, consultation_id=c.id)
    assert len(recorded) == 2
    # Not sealed without its audit entry...
    assert {r.status for r in recorded} == {"recording"} and all(r.manifest_sha256 is None for r in recorded)

    monkeypatch.undo()
    await server.app[RECORDINGS].recover()
    # ...and sealed, with it, at the next start: with the manifest the first attempt
    # stored (the store never overwrites), as an ordinary end of call.
    key = server.app[RECORDINGS].key.public_key()
    for r in await rows(server, Recording, consultation_id=c.id):
        assert r.status == "complete" and r.manifest_sha256
        assert (await actions(server, f"recording:{r.id}")).count("recording.seal") == 1
        report = await verify(StoredPackage(server.app[STORE], f"recordings/{c.id}/{r.id}/"), key)
        assert report.end_reason == "closed" and report.segments == r.segments
        stored = await server.app[STORE].read_bytes(f"recordings/{c.id}/{r.id}/manifest.json")
        assert hashlib.sha256(stored).hexdigest() == r.manifest_sha256


async def test_classification_and_its_audit_entry_commit_together(call, server, audit_fails):
    c = await call()
    await c.console.wait_media(audio=20, video=15)
    await c.victim.wait_for(lambda m: m["type"] == "state" and m["recording"] is True)
    rid = (await rows(server, Recording, consultation_id=c.id))[0].id
    url = f"/api/consultations/{c.id}/recordings/{rid}/classification"

    unencodable = await c.officer.client.post(
        url, data='{"classification": "evidential", "reason": "\\ud800"}',
        headers={**c.officer.headers(), "Content-Type": "application/json"})
    assert unencodable.status == 422 and (await unencodable.json())["error"]["code"] == "unencodable_text"

    audit_fails()
    failed = await c.officer.post(url, {"classification": "evidential", "reason": "Shows the injuries"})
    assert failed.status == 500
    [row] = await rows(server, Recording, id=rid)
    assert row.classification == "non_evidential", "changed without its audit entry"
    assert "recording.classify" not in await actions(server, f"recording:{rid}")


async def test_reasons_and_ids_that_cannot_be_stored_are_refused_not_500(call, server):
    """PostgreSQL stores no NUL in text: a reason or a recording id holding one was a 500."""
    c = await call()
    await c.console.wait_media(audio=20, video=15)
    await c.victim.wait_for(lambda m: m["type"] == "state" and m["recording"] is True)
    rid = (await rows(server, Recording, consultation_id=c.id))[0].id
    base = f"/api/consultations/{c.id}/recordings"
    nul = await c.officer.post(f"{base}/{rid}/classification", {"classification": "evidential", "reason": "a\u0000b"})
    assert nul.status == 422 and (await nul.json())["error"]["code"] == "unencodable_text"
    [row] = await rows(server, Recording, id=rid)
    assert row.classification == "non_evidential"
    for path in (f"{base}/{rid}/export?reason=a%00b", f"{base}/{rid}/playback?reason=%1b[2J"):
        response = await c.officer.get(path)  # a query parameter: refused before any handler
        assert response.status == 400 and (await response.json())["error"]["code"] == "invalid_parameter", path
    for bad_id in ("%00", "x" * 300, "%ED%A0%80"):
        response = await c.officer.get(f"{base}/{bad_id}")
        assert response.status == 404 and (await response.json())["error"]["code"] == "not_found", bad_id
