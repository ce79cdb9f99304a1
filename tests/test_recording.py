"""Recording like body-worn video: segments remuxed from the relayed media, hashed,
chained into a signed manifest; listed, played back, exported and verified."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import zipfile
from pathlib import Path

import av
import pytest
from sqlalchemy import select

from evr.cli import main as _evr
from evr.db import AuditEntry, EvidenceItem
from evr.http import DB, RECORDINGS, STORE
from evr.keys import load_signing_key
from evr.recording.manifest import Problem
from evr.recording.verify import StoredPackage, ZipPackage, verify


async def evr(argv: list[str]) -> int:
    """The ``evr`` command, run as a user would (in its own thread, with its own loop)."""
    return await asyncio.to_thread(_evr, argv)


@pytest.fixture
def settings(settings):
    settings.recording_segment_seconds = 1.0
    return settings


async def recorded_call(call, seconds: float = 2.6):
    """A call that runs for ``seconds`` of media, then is closed by the officer."""
    c = await call()
    await c.console.wait_media(audio=20, video=15)
    state = await c.victim.wait_for(lambda m: m["type"] == "state" and m["recording"] is True)
    assert state["status"] in ("waiting", "live")
    await asyncio.sleep(seconds)
    response = await c.officer.post(f"/api/consultations/{c.id}/close")
    assert response.status == 200
    return c


async def recordings_of(c):
    response = await c.officer.get(f"/api/consultations/{c.id}/recordings")
    assert response.status == 200, await response.text()
    return (await response.json())["recordings"]


async def audit_actions(server, object_):
    async with server.app[DB]() as db:
        return [e.action for e in await db.scalars(select(AuditEntry).where(AuditEntry.object == object_))]


async def test_every_participant_is_recorded_and_sealed(call, server):
    c = await recorded_call(call)
    recordings = await recordings_of(c)
    assert sorted(r["participant"] for r in recordings) == ["officer", "victim"]
    key = server.app[RECORDINGS].key.public_key()
    for r in recordings:
        assert r["status"] == "complete" and r["ended_at"] and r["manifest_sha256"]
        assert r["segments"] >= 2  # 1-second segments over ~3 s of media
        assert 1.5 < r["duration_s"] < 6
        assert r["classification"] == "non_evidential"
        package = StoredPackage(server.app[STORE], f"recordings/{c.id}/{r['id']}/")
        report = await verify(package, key)
        assert report.segments == r["segments"] and report.end_reason == "closed"
        recording = report.manifest["recording"]
        assert recording["cad_ref"] == "CAD-2026-000123" and recording["officer"] == "alice"
        assert recording["participant"]["role"] == r["participant"]
        assert recording["participant"]["user_agent"]  # the device that sent the media
        for entry in report.manifest["entries"]:
            if entry["type"] == "segment":
                assert entry["started_at"] <= entry["ended_at"]
        assert "recording.capture" in await audit_actions(server, f"recording:{r['id']}")
        async with server.app[DB]() as db:
            item = await db.get(EvidenceItem, r["id"])
            assert item.kind == "recording" and item.sha256 == r["manifest_sha256"] and item.size > 0
    # The victim heard the recording is on; after close the state is gone with the room.
    assert any(m.get("recording") is True for m in c.console.messages if m["type"] == "state")


async def test_playback_is_one_playable_file_and_is_audit_logged(call, server):
    c = await recorded_call(call)
    victim = next(r for r in await recordings_of(c) if r["participant"] == "victim")
    response = await c.officer.get(f"/api/consultations/{c.id}/recordings/{victim['id']}/playback")
    assert response.status == 200 and response.headers["Content-Type"] == "video/webm"
    data = await response.read()
    with av.open(io.BytesIO(data)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= 45  # ~2.6 s at 30 fps, decodable across segment joins
    with av.open(io.BytesIO(data)) as container:
        assert {s.type for s in container.streams} == {"audio", "video"}
        assert float(container.duration / 1_000_000) == pytest.approx(victim["duration_s"], abs=1.0)
    assert "recording.view" in await audit_actions(server, f"recording:{victim['id']}")
    # A seek (a Range request past the start) is not another viewing, and gets those bytes.
    url = f"/api/consultations/{c.id}/recordings/{victim['id']}/playback"
    ranged = await c.officer.client.get(url, headers={"Range": "bytes=100-1123"})
    assert ranged.status == 206 and await ranged.read() == data[100:1124]
    assert ranged.headers["Content-Range"] == f"bytes 100-1123/{len(data)}"
    tail = await c.officer.client.get(url, headers={"Range": "bytes=-50"})
    assert tail.status == 206 and await tail.read() == data[-50:]
    beyond = await c.officer.client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status == 416
    assert (await audit_actions(server, f"recording:{victim['id']}")).count("recording.view") == 1
    # The joined copy is a derivative kept in the store, encrypted, under the recording's
    # prefix (disposal takes it with the originals); nothing plain is left on disk.
    base = f"recordings/{c.id}/{victim['id']}/"
    derived = [k for k in await server.app[STORE].keys(base) if k.startswith(base + "derived/")]
    assert len(derived) == 1 and await server.app[STORE].read_bytes(derived[0]) == data
    data_dir = server.app[RECORDINGS].settings.data_dir
    assert not any(data[:4096] in p.read_bytes() for p in data_dir.rglob("*.webm") if p.is_file())
    # Verification and export leave the derivative out.
    assert (await verify(StoredPackage(server.app[STORE], base), server.app[RECORDINGS].key.public_key())).segments


async def test_export_verifies_and_every_tampering_is_caught(call, server, tmp_path, capsys):
    c = await recorded_call(call, seconds=3.2)
    victim = next(r for r in await recordings_of(c) if r["participant"] == "victim")
    url = f"/api/consultations/{c.id}/recordings/{victim['id']}/export"
    refused = await c.officer.get(url)
    assert refused.status == 422 and (await refused.json())["error"]["code"] == "reason_required"
    response = await c.officer.get(url + "?reason=Disclosure to CPS, case 44")
    assert response.status == 200 and response.headers["Content-Type"] == "application/zip"
    archive = tmp_path / "export.zip"
    archive.write_bytes(await response.read())
    async with server.app[DB]() as db:
        exported = await db.scalar(select(AuditEntry).where(AuditEntry.action == "recording.export"))
    assert exported.reason == "Disclosure to CPS, case 44" and exported.actor == "alice"

    names = set(zipfile.ZipFile(archive).namelist())
    assert {"manifest.json", "manifest.sig", "public_key.pem", "HOW-TO-VERIFY.txt", "seg-000001.webm"} <= names
    assert await evr(["recording", "verify", str(archive)]) == 0
    assert "OK: recording" in capsys.readouterr().out

    async def problem(package) -> str:
        with pytest.raises(Problem) as caught:
            await verify(package)
        return str(caught.value)

    unpacked = tmp_path / "unpacked"

    def fresh() -> Path:
        shutil.rmtree(unpacked, ignore_errors=True)
        zipfile.ZipFile(archive).extractall(unpacked)
        return unpacked

    from evr.recording.verify import DirPackage

    # One byte changed in a segment.
    d = fresh()
    seg = d / "seg-000002.webm"
    raw = bytearray(seg.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    seg.write_bytes(bytes(raw))
    assert "seg-000002.webm does not match" in await problem(DirPackage(d))
    assert await evr(["recording", "verify", str(d)]) == 1
    assert "FAILED: segment seg-000002.webm" in capsys.readouterr().out
    # A segment removed.
    d = fresh()
    (d / "seg-000002.webm").unlink()
    assert "segment seg-000002.webm is missing" in await problem(DirPackage(d))
    # Two segments swapped.
    d = fresh()
    a, b = (d / "seg-000001.webm"), (d / "seg-000002.webm")
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    assert "seg-000001.webm does not match" in await problem(DirPackage(d))
    # The manifest edited (a segment's hash rewritten to hide a change).
    d = fresh()
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["entries"][0]["sha256"] = "0" * 64
    (d / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=1))
    assert "signature does not match" in await problem(DirPackage(d))
    # An extra file slipped in.
    d = fresh()
    (d / "seg-000099.webm").write_bytes(b"x")
    assert "seg-000099.webm is not part of the signed recording" in await problem(DirPackage(d))
    # Signed by another key than the one trusted.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    with pytest.raises(Problem, match="not the key you trust"):
        await verify(ZipPackage(archive), Ed25519PrivateKey.generate().public_key())
    # The stored original verifies through the CLI by id, with the service's own key.
    settings = server.app[RECORDINGS].settings
    assert load_signing_key(settings, create=False)
    (settings.data_dir / "evr.toml").write_text(f'database_url = "{settings.db_url}"\n')
    assert await evr(["recording", "verify", "--data", str(settings.data_dir), victim["id"]]) == 0


async def test_in_progress_recording_cannot_be_exported_but_lists(call):
    c = await call()
    await c.console.wait_media(audio=20, video=15)
    await c.victim.wait_for(lambda m: m["type"] == "state" and m["recording"] is True)
    recordings = await recordings_of(c)
    assert {r["status"] for r in recordings} == {"recording"}
    response = await c.officer.get(f"/api/consultations/{c.id}/recordings/{recordings[0]['id']}/export?reason=x")
    assert response.status == 409 and (await response.json())["error"]["code"] == "recording_in_progress"


async def test_classification_roles_and_audit(call, server, staff):
    c = await recorded_call(call, seconds=1.2)
    rid = (await recordings_of(c))[0]["id"]
    url = f"/api/consultations/{c.id}/recordings/{rid}/classification"
    missing = await c.officer.post(url, {"classification": "evidential"})
    assert missing.status == 422 and (await missing.json())["error"]["code"] == "reason_required"
    bad = await c.officer.post(url, {"classification": "secret", "reason": "x"})
    assert bad.status == 422
    marked = await c.officer.post(url, {"classification": "evidential", "reason": "Shows the injuries"})
    assert marked.status == 200 and (await marked.json())["classification"] == "evidential"
    async with server.app[DB]() as db:
        entry = await db.scalar(select(AuditEntry).where(AuditEntry.action == "recording.classify"))
    assert entry.reason == "Shows the injuries" and entry.details == {"from": "non_evidential", "to": "evidential"}
    # Records staff cannot classify, and may open content only with a reason.
    records = await staff("rita", "records")
    assert (await records.post(url, {"classification": "non_evidential", "reason": "x"})).status == 403
    playback = f"/api/consultations/{c.id}/recordings/{rid}/playback"
    no_reason = await records.get(playback)
    assert no_reason.status == 422
    assert (await records.get(playback + "?reason=Retention review 2026-11")).status == 200
    # Another officer does not see this consultation at all.
    other = await staff("bob", "officer")
    assert (await other.get(f"/api/consultations/{c.id}/recordings")).status == 404
    assert (await other.get(playback)).status == 404
