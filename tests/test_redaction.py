"""Redaction over HTTP and in the job queue: a request is checked before anything is
queued, a job runs in a worker (in evr serve or evr worker), survives a restart, can be
cancelled, fails saying why, and its copy is a new recording that verifies with its
provenance while the original's files and hashes never change."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
import zipfile
from datetime import datetime

import av
import pytest
from conftest import eventually
from sqlalchemy import select
from test_recording import evr, recorded_call, recordings_of

from evr.audit import Actor
from evr.db import AuditEntry, RedactionJob
from evr.http import AUDIT, DB, REDACTIONS, RETENTION, SIGNING_KEY, STORE
from evr.recording.manifest import Problem
from evr.recording.redactions import Redactor
from evr.recording.verify import SOURCE_MANIFEST, StoredPackage, ZipPackage, verify


@pytest.fixture
def settings(settings, request):
    settings.recording_segment_seconds = 1.0
    if request.node.get_closest_marker("serve_worker") is None:
        settings.redaction_workers = 0  # the test runs its own worker where it wants one
    return settings


def worker(server, settings, clock, slots: int = 1) -> Redactor:
    app = server.app
    return Redactor(settings, clock, app[DB], app[STORE], app[SIGNING_KEY], app[AUDIT], app[REDACTIONS], slots)


async def victim_recording(c):
    return next(r for r in await recordings_of(c) if r["participant"] == "victim" and r["track"] == "camera")


def url(c, rid: str, tail: str = "") -> str:
    return f"/api/consultations/{c.id}/recordings/{rid}/redactions{tail}"


async def stored_hashes(server, c, rid: str) -> dict[str, str]:
    store, base = server.app[STORE], f"recordings/{c.id}/{rid}/"
    return {k: hashlib.sha256(await store.read_bytes(k)).hexdigest() for k in await store.keys(base)
            if "/derived/" not in k}


async def actions(server, **where) -> list[str]:
    async with server.app[DB]() as db:
        query = select(AuditEntry.action)
        for name, value in where.items():
            query = query.where(getattr(AuditEntry, name) == value)
        return list(await db.scalars(query.order_by(AuditEntry.id)))


async def jobs_in_db(server) -> list[RedactionJob]:
    async with server.app[DB]() as db:
        return list(await db.scalars(select(RedactionJob)))


async def wait_job(c, rid: str, job_id: str, status: str, timeout: float = 60.0) -> dict:
    async def probe():
        response = await c.officer.get(url(c, rid, f"/{job_id}"))
        assert response.status == 200
        return await response.json()

    return await eventually(probe, lambda j: j["status"] == status, timeout=timeout)


async def test_a_bad_request_is_refused_clearly_and_starts_nothing(call, server, staff):
    c = await call()
    await c.console.wait_media(audio=20, video=15)
    live = await eventually(lambda: recordings_of(c), lambda rs: any(r["participant"] == "victim" for r in rs))
    running = next(r for r in live if r["participant"] == "victim")
    body = {"reason": "disclosure to CPS", "mute": [{"from": 0.1, "to": 0.5}]}
    response = await c.officer.post(url(c, running["id"]), body)
    assert response.status == 409 and (await response.json())["error"]["code"] == "recording_in_progress"
    await asyncio.sleep(1.5)
    assert (await c.officer.post(f"/api/consultations/{c.id}/close")).status == 200
    rec = await victim_recording(c)
    assert rec["status"] == "complete"

    async def refused(body, status, code, rid=rec["id"]):
        response = await c.officer.post(url(c, rid), body)
        assert response.status == status, await response.text()
        error = (await response.json())["error"]
        assert error["code"] == code and error["message"]
        return error

    await refused(body, 404, "not_found", rid=str(uuid.uuid4()))
    await refused(body, 404, "not_found", rid="not-a-uuid")
    await refused({"mute": [{"from": 0.1, "to": 0.5}]}, 422, "reason_required")
    await refused({**body, "reason": "  "}, 422, "reason_required")
    past = await refused({**body, "mute": [{"from": 1, "to": rec["duration_s"] + 60}]}, 422, "range_past_end")
    assert past["fields"] == ["mute"]
    await refused({**body, "mute": [{"from": 2, "to": 1}]}, 422, "invalid_range")
    await refused({**body, "mute": [{"from": "a", "to": 1}]}, 422, "invalid_time")
    await refused({**body, "mute": [{"from": -1, "to": 1}]}, 422, "invalid_range")
    for box in ([0.8, 0.1, 0.3, 0.3], [-0.1, 0, 0.2, 0.2], [0.1, 0.1, 0, 0.2], [0.1, 0.9, 0.2, 0.2]):
        await refused({"reason": "x", "blur": [{"from": 0, "to": 1, "box": box}]}, 422, "box_outside_frame")
    await refused({"reason": "x", "blur": [{"from": 0, "to": 1, "box": [0.1, 0.1]}]}, 422, "invalid_box")
    await refused({"reason": "x", "blur": [{"from": 0, "to": 1, "box": [0.1, 0.1, 0.2, 0.2],
                                            "style": "sparkle"}]}, 422, "invalid_style")
    await refused({"reason": "x"}, 422, "nothing_to_redact")
    await refused({"reason": "x", "mute": "all"}, 422, "invalid_operations")
    await refused({"reason": "x", "blur_faces": "yes"}, 422, "invalid_operations")
    await refused({"reason": "x", "mute": [{"from": 0, "to": 0.1}] * 201}, 422, "too_many_operations")
    await refused([1, 2], 422, "invalid")
    garbage = await c.officer.client.post(url(c, rec["id"]), data=b"{nope", headers=c.officer.headers())
    assert garbage.status == 400 and (await garbage.json())["error"]["code"] == "malformed_json"
    # Roles: admin manages users, not evidence; the victim's link reaches nothing here.
    admin = await staff("root", "admin")
    assert (await admin.post(url(c, rec["id"]), body)).status == 403
    assert (await c.phone.post(url(c, rec["id"]), json=body)).status in (401, 403)
    # Nothing was queued, nothing was logged as requested.
    assert await jobs_in_db(server) == []
    assert "recording.redaction_request" not in await actions(server)
    # A range may reach the recording's last instant: its last segment's end.
    entries = (await (await c.officer.get(f"/api/consultations/{c.id}/recordings/{rec['id']}")).json())["entries"]
    last = max(e.get("ended_at") or e.get("at") for e in entries)
    started = rec["started_at"]
    span = (datetime.fromisoformat(last.replace("Z", "+00:00"))
            - datetime.fromisoformat(started.replace("Z", "+00:00"))).total_seconds()
    whole = await c.officer.post(url(c, rec["id"]), {"reason": "x", "mute": [{"from": 0, "to": span}]})
    assert whole.status == 202, await whole.text()


async def test_a_job_makes_a_redacted_copy_that_verifies_and_leaves_the_original_untouched(
        call, server, settings, clock, tmp_path):
    c = await recorded_call(call, seconds=3.0)
    original = await victim_recording(c)
    before = await stored_hashes(server, c, original["id"])
    body = {"reason": "Disclosure to CPS: a neighbour's face and an address",
            "mute": [{"from": 0.5, "to": 1.5}],
            "blur": [{"from": 0, "to": 2.0, "box": [0.1, 0.1, 0.3, 0.4]},
                     {"from": 1.0, "to": 2.5, "box": [0.6, 0.5, 0.4, 0.5], "style": "mask"}],
            "blur_faces": True}
    response = await c.officer.post(url(c, original["id"]), body)
    assert response.status == 202, await response.text()
    queued = await response.json()
    assert queued["status"] == "queued" and queued["progress"] == 0.0 and queued["recording_id"] is None
    assert queued["operations"]["blur"][1]["style"] == "mask" and queued["operations"]["blur_faces"] is True

    runner = asyncio.create_task(worker(server, settings, clock).run(once=True))
    done = await wait_job(c, original["id"], queued["id"], "done")
    assert await runner == 1
    assert done["progress"] == 1.0 and done["error"] is None and done["recording_id"]

    listed = {r["id"]: r for r in await recordings_of(c)}
    copy = listed[done["recording_id"]]
    assert copy["kind"] == "redacted" and copy["source_recording"] == original["id"]
    assert copy["source_manifest_sha256"] == original["manifest_sha256"]
    assert copy["redaction"]["mute"] == [{"from": 0.5, "to": 1.5}]
    assert copy["status"] == "complete" and copy["segments"] == original["segments"]
    assert copy["classification"] == original["classification"]
    assert listed[original["id"]]["kind"] == "original"
    # The original's files and hashes are exactly as before.
    assert await stored_hashes(server, c, original["id"]) == before
    assert listed[original["id"]]["manifest_sha256"] == original["manifest_sha256"]

    # The copy verifies with its provenance, stored and exported.
    key = server.app[SIGNING_KEY].public_key()
    report = await verify(StoredPackage(server.app[STORE], f"recordings/{c.id}/{copy['id']}/"), key)
    assert report.source is not None and report.source.recording_id == original["id"]
    assert report.source.manifest_sha256 == original["manifest_sha256"]
    described = report.manifest["recording"]
    assert described["kind"] == "redacted" and described["redaction"]["operations"]["blur_faces"] is True
    assert described["redaction"]["requested_by"] == "alice"
    for entry in report.manifest["entries"]:
        if entry["type"] == "segment":
            assert entry["source_sha256"] != entry["sha256"]  # made anew from the original's segment
    export = await c.officer.get(f"/api/consultations/{c.id}/recordings/{copy['id']}/export?reason=CPS")
    assert export.status == 200
    archive = tmp_path / "copy.zip"
    archive.write_bytes(await export.read())
    assert await evr(["recording", "verify", str(archive)]) == 0
    with zipfile.ZipFile(archive) as z:
        assert "This is a redacted copy" in z.read("HOW-TO-VERIFY.txt").decode()
        names = z.namelist()
        swapped = tmp_path / "swapped.zip"
        with zipfile.ZipFile(swapped, "w") as out:
            for name in names:
                data = z.read(name)
                if name == SOURCE_MANIFEST:
                    data = data.replace(b'"complete"', b'"terminated"', 1)
                out.writestr(name, data)
    with pytest.raises(Problem, match="not the original's manifest"):
        await verify(ZipPackage(swapped))
    assert await evr(["recording", "verify", str(swapped)]) == 1

    # It plays: one WebM, both kinds, about as long as the original.
    played = await c.officer.get(f"/api/consultations/{c.id}/recordings/{copy['id']}/playback")
    assert played.status == 200
    with av.open(io.BytesIO(await played.read())) as container:
        assert {s.type for s in container.streams} == {"audio", "video"}
        assert sum(1 for _ in container.decode(video=0)) >= 45

    # Every step is in the audit log, with the reason.
    assert (await actions(server, object=f"recording:{original['id']}"))[-1] == "recording.redaction_request"
    async with server.app[DB]() as db:
        made = await db.scalar(select(AuditEntry).where(AuditEntry.action == "recording.redact"))
    assert made.object == f"recording:{copy['id']}" and made.reason == body["reason"]
    assert made.details["source_manifest_sha256"] == original["manifest_sha256"]

    # A copy is classified with its original, never on its own.
    refused = await c.officer.post(f"/api/consultations/{c.id}/recordings/{copy['id']}/classification",
                                   {"classification": "evidential", "reason": "x"})
    assert refused.status == 409 and (await refused.json())["error"]["code"] == "redacted_copy"
    marked = await c.officer.post(f"/api/consultations/{c.id}/recordings/{original['id']}/classification",
                                  {"classification": "evidential", "reason": "assault"})
    assert marked.status == 200
    assert {r["id"]: r for r in await recordings_of(c)}[copy["id"]]["classification"] == "evidential"
    async with server.app[DB]() as db:
        classified = await db.scalar(select(AuditEntry).where(AuditEntry.action == "recording.classify"))
    assert classified.details["redacted_copies"] == [copy["id"]]
    # Nothing plain is left of the job.
    assert not any((settings.data_dir / "spool" / "redactions").glob("*/*/*.webm"))


async def test_cancel_restart_and_failure_leave_nothing_behind(call, server, settings, clock):
    c = await recorded_call(call, seconds=1.5)
    rec = await victim_recording(c)
    body = {"reason": "CPS", "mute": [{"from": 0.2, "to": 0.8}]}

    # Queued, then cancelled at once; a second cancel is refused.
    first = await (await c.officer.post(url(c, rec["id"]), body)).json()
    cancelled = await c.officer.post(url(c, rec["id"], f"/{first['id']}/cancel"))
    assert cancelled.status == 200 and (await cancelled.json())["status"] == "cancelled"
    again = await c.officer.post(url(c, rec["id"], f"/{first['id']}/cancel"))
    assert again.status == 409 and (await again.json())["error"]["code"] == "job_finished"
    assert (await c.officer.get(url(c, rec["id"], f"/{uuid.uuid4()}"))).status == 404

    # Survives a stop: a worker stopped mid-job puts it back in the queue.
    second = await (await c.officer.post(url(c, rec["id"]), body)).json()
    runner = asyncio.create_task(worker(server, settings, clock).run())
    await wait_job(c, rec["id"], second["id"], "running")
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    back = await wait_job(c, rec["id"], second["id"], "queued")
    assert back["recording_id"] is None
    # A worker that died without a word: its job is queued again once it is stale.
    jobs = server.app[REDACTIONS]
    claimed = await jobs.claim("dead-worker")
    assert claimed is not None and claimed.id == second["id"]
    assert await jobs.claim("other") is None  # still fresh: not taken from the first
    clock.advance(seconds=settings.redaction_stale_seconds + 1)
    retaken = await jobs.claim("other")
    assert retaken is not None and retaken.id == second["id"] and retaken.attempts == claimed.attempts + 1
    assert "recording.redaction_requeue" in await actions(server)
    await jobs.end(retaken, "other", "cancelled")  # (this test's own stand-in worker lets go of it)

    # A media process that cannot run fails the job with a sentence, and stores nothing.
    settings.redaction_memory_mb = 40  # too little for the codecs to load
    third = await (await c.officer.post(url(c, rec["id"]), body)).json()
    assert await worker(server, settings, clock).run(once=True) == 1
    failed = await wait_job(c, rec["id"], third["id"], "failed")
    assert failed["error"] and "Traceback" not in failed["error"] and failed["recording_id"] is None
    assert "recording.redaction_fail" in await actions(server)
    assert [r["kind"] for r in await recordings_of(c)].count("redacted") == 0
    copies = [k for k in await server.app[STORE].keys(f"recordings/{c.id}/")
              if k.split("/")[2] not in {r["id"] for r in await recordings_of(c)}]
    assert copies == []
    listed = await (await c.officer.get(url(c, rec["id"]))).json()
    assert [j["status"] for j in listed["redactions"]] == ["failed", "cancelled", "cancelled"]


@pytest.mark.serve_worker
async def test_evr_serve_runs_jobs_itself_and_a_copy_is_kept_held_and_disposed_of_with_its_original(
        call, server, clock):
    c = await recorded_call(call, seconds=1.5)
    rec = await victim_recording(c)
    body = {"reason": "CPS", "blur": [{"from": 0, "to": 1, "box": [0, 0, 0.5, 0.5]}]}
    job = await (await c.officer.post(url(c, rec["id"]), body)).json()
    done = await wait_job(c, rec["id"], job["id"], "done")  # no worker of the test's own: the server's
    retention = server.app[RETENTION]
    await retention.refresh()
    rows = {r.item_id: r for r in await retention.items_of(c.id)}
    original, copy = rows[rec["id"]], rows[done["recording_id"]]
    assert (copy.rule, copy.due_at, copy.action) == (original.rule, original.due_at, original.action)
    assert not copy.held
    rita = Actor("rita", "records")
    await retention.hold(rita, rec["id"], "Appeal pending")
    rows = {r.item_id: r for r in await retention.items_of(c.id)}
    assert rows[rec["id"]].held and rows[done["recording_id"]].held
    clock.advance(days=32)  # past the 31 days of a non-evidential recording
    await retention.sweep()
    rows = {r.item_id: r for r in await retention.items_of(c.id)}
    assert rows[rec["id"]].state == rows[done["recording_id"]].state == "active"  # held: kept, both
    await retention.release(rita, rec["id"], "Appeal decided")
    await retention.sweep()
    rows = {r.item_id: r for r in await retention.items_of(c.id)}
    assert rows[rec["id"]].state == rows[done["recording_id"]].state == "disposed"
    assert await server.app[STORE].keys(f"recordings/{c.id}/{done['recording_id']}/") == []
