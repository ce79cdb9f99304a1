"""The disclosure bundle: what the issue's "done" asks. An officer blurs a bystander's
face and mutes a spoken address in a recording, runs the job, and exports a bundle for
the prosecutor whose every item verifies; the original's hashes are unchanged."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import zipfile

import pytest
from conftest import eventually
from sqlalchemy import select
from test_recording import evr, recordings_of
from test_redaction import stored_hashes, url, victim_recording, wait_job, worker
from test_statements import DRAFT, signing_body
from test_uploads import staff_headers, tus_send, upload_id

from evr.db import AuditEntry, EvidenceItem
from evr.disclosure import Problem, verify_bundle
from evr.http import DB, STORE
from evr.transcripts import item_id as chat_item_id

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


@pytest.fixture
def settings(settings):
    settings.recording_segment_seconds = 1.0
    settings.redaction_workers = 0
    return settings


async def signed_statement(c) -> str:
    created = await c.officer.post(f"/api/consultations/{c.id}/statements",
                                   DRAFT)
    assert created.status == 201, await created.text()
    sid = (await created.json())["id"]
    assert (await c.officer.post(f"/api/consultations/{c.id}/statements/{sid}/send")).status == 200
    signed = await c.phone.post(f"{c.link.path}/statements/{sid}/sign", json=signing_body())
    assert signed.status == 200, await signed.text()
    return sid


async def test_an_officer_redacts_then_discloses_a_bundle_whose_every_item_verifies(
        call, server, settings, clock, tmp_path):
    c = await call()  # a call in which the victim signs a statement and a photo is uploaded
    await c.console.wait_media(audio=20, video=15)
    sid = await signed_statement(c)
    upload = await tus_send(str(c.officer.client.make_url(f"/api/consultations/{c.id}/uploads")),
                            staff_headers(c.officer), PNG, name="=cmd|' /C calc'!A0.png", filetype="image/png")
    uid = upload_id(upload)
    # Long enough a recording for the ranges below (up to 3 s), however fast the call got going.
    await eventually(lambda: c.console.video_frames, lambda n: n >= 4 * 30, timeout=20.0,
                     what="four seconds of the victim's video")
    assert (await c.officer.post(f"/api/consultations/{c.id}/close")).status == 200
    sealed = await (await c.officer.get(f"/api/consultations/{c.id}/statements/{sid}")).json()
    original = await victim_recording(c)
    officer_rec = next(r for r in await recordings_of(c) if r["participant"] == "officer")
    before = await stored_hashes(server, c, original["id"])

    # A bystander's face (a box) and a spoken address (a range), run with progress.
    job = await (await c.officer.post(url(c, original["id"]), {
        "reason": "Disclosure to CPS", "mute": [{"from": 1.0, "to": 2.0}],
        "blur": [{"from": 0.0, "to": 3.0, "box": [0.5, 0.1, 0.3, 0.4]}]})).json()
    runner = asyncio.create_task(worker(server, settings, clock).run(once=True))
    done = await wait_job(c, original["id"], job["id"], "done")
    await runner

    # Nothing leaves without a reason, or for an item of another consultation.
    disclose = f"/api/consultations/{c.id}/disclosure"
    items = [original["id"], officer_rec["id"], sid, uid]
    for body, status, code in (({"items": items}, 422, "reason_required"),
                               ({"reason": "CPS", "items": []}, 422, "items_required"),
                               ({"reason": "CPS", "items": ["nope"]}, 422, "unknown_item"),
                               ({"reason": "CPS", "items": [c.id]}, 422, "unknown_item")):
        refused = await c.officer.post(disclose, body)
        assert refused.status == status and (await refused.json())["error"]["code"] == code
    async with server.app[DB]() as db:
        assert await db.scalar(select(AuditEntry).where(AuditEntry.action == "disclosure.export")) is None

    response = await c.officer.post(disclose, {"reason": "Pre-charge file for the CPS", "items": items})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "application/zip"
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(await response.read())

    report = await verify_bundle(bundle)
    assert report.items == 4 and report.redacted == 2  # the recording's copy and the statement's
    assert await evr(["disclosure", "verify", str(bundle)]) == 0
    with zipfile.ZipFile(bundle) as z:
        schedule = json.loads(z.read("schedule.json"))
        rows = list(csv.DictReader(io.StringIO(z.read("SCHEDULE.csv").decode())))
        names = set(z.namelist())
        by_item = {i["item"]: i for i in schedule["items"]}
        # The recording goes as its redacted copy, naming the original it was made from.
        victim = by_item[original["id"]]
        assert victim["redacted"] and victim["folder"] == f"recordings/{done['recording_id']}/"
        assert victim["source"] == {"id": original["id"], "sha256": original["manifest_sha256"]}
        assert f"recordings/{done['recording_id']}/source-manifest.json" in names
        # One with no copy goes as it is; the statement without its rear page.
        assert not by_item[officer_rec["id"]]["redacted"]
        statement = by_item[sid]
        assert statement["redacted"] and statement["files"][0]["path"] == f"statements/{sid}/disclosure.pdf"
        assert statement["source"] == {"id": sid, "sha256": sealed["sha256"]}
        assert z.read(statement["files"][0]["path"]).startswith(b"%PDF")
        assert by_item[uid]["files"][0]["sha256"] == hashlib.sha256(PNG).hexdigest()
        # A description is never a spreadsheet formula.
        assert all(not r["description"].startswith("=") for r in rows)
        assert {r["item"] for r in rows} == set(items)
        assert "evr disclosure verify" in z.read("HOW-TO-VERIFY.txt").decode()
        files = {n: z.read(n) for n in z.namelist()}

    # Every item verifies on its own too; the original is untouched.
    folder = tmp_path / "copy"
    folder.mkdir()
    for name, data in files.items():
        if name.startswith(victim["folder"]):
            (folder / name.rsplit("/", 1)[1]).write_bytes(data)
    (folder / "public_key.pem").write_bytes(files["public_key.pem"])
    assert await evr(["recording", "verify", str(folder)]) == 0
    assert await stored_hashes(server, c, original["id"]) == before

    # Tampering with any item or the schedule is caught, and named.
    def rewrite(target: str, change) -> None:
        with zipfile.ZipFile(target, "w") as out:
            for name, data in files.items():
                out.writestr(name, change(name, data))

    swapped = tmp_path / "swapped.zip"
    rewrite(str(swapped), lambda n, d: d[:-1] + bytes([d[-1] ^ 1]) if n == f"uploads/{uid}/" + n.split("/")[-1]
            and n.startswith(f"uploads/{uid}/") else d)
    with pytest.raises(Problem, match="does not match its SHA-256"):
        await verify_bundle(swapped)
    forged = tmp_path / "forged.zip"
    rewrite(str(forged), lambda n, d: d.replace(b"Pre-charge", b"Post-charge") if n == "schedule.json" else d)
    with pytest.raises(Problem, match="signature does not match"):
        await verify_bundle(forged)
    assert await evr(["disclosure", "verify", str(forged)]) == 1

    # Audit-logged as a disclosure, with the reason and every item.
    async with server.app[DB]() as db:
        entry = await db.scalar(select(AuditEntry).where(AuditEntry.action == "disclosure.export"))
    assert entry.reason == "Pre-charge file for the CPS" and entry.actor == "alice"
    assert {i["item"] for i in entry.details["items"]} == set(items)


async def test_the_chat_transcript_is_disclosed_as_its_signed_package(call, server, tmp_path):
    c = await call()
    await c.victim.send({"type": "chat", "text": "He left at ten"})
    await c.console.wait_for(lambda m: m.get("type") == "chat" and m.get("text") == "He left at ten")
    assert (await c.officer.post(f"/api/consultations/{c.id}/close")).status == 200
    chat_id = chat_item_id(c.id)

    async def sealed():
        async with server.app[DB]() as db:
            return await db.get(EvidenceItem, chat_id)

    await eventually(sealed)
    response = await c.officer.post(f"/api/consultations/{c.id}/disclosure", {"reason": "CPS", "items": [chat_id]})
    assert response.status == 200, await response.text()
    bundle = tmp_path / "chat.zip"
    bundle.write_bytes(await response.read())
    report = await verify_bundle(bundle)
    assert report.items == 1 and report.redacted == 0
    # An item whose content was disposed of is refused in words, not a 500, and nothing is logged.
    rec = (await recordings_of(c))[0]
    await server.app[STORE].dispose_all_versions(f"recordings/{c.id}/{rec['id']}/")
    gone = await c.officer.post(f"/api/consultations/{c.id}/disclosure", {"reason": "CPS", "items": [rec["id"]]})
    assert gone.status == 410 and (await gone.json())["error"]["code"] == "disposed"
    async with server.app[DB]() as db:
        logged = list(await db.scalars(select(AuditEntry).where(AuditEntry.action == "disclosure.export")))
    assert len(logged) == 1
