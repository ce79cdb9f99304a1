"""Chat and location: messages kept hash-chained, read by staff (audit-logged) and by
the link's holder, sealed and signed at close, verified by ``evr chat verify``,
disposed of with the consultation's items; locations checked and audit-logged
without coordinates. (The socket's side is tests/test_multiparty.py's.)"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import claim, eventually, link_path
from sqlalchemy import func, select

from evr.audit import Actor
from evr.chat import MAX_CHARS, Chat, ChatError, Sender
from evr.cli import main as _evr
from evr.db import AuditEntry, ChatMessage, Consultation, EvidenceItem
from evr.http import CHAT, DB, LOCATIONS, STORE
from evr.integrity import GENESIS
from evr.location import LocationError
from evr.recording.manifest import Problem
from evr.recording.verify import DirPackage, ZipPackage
from evr.transcripts import item_id, prefix, verify

VICTIM = Sender("victim", "Sam", Actor("victim", "victim"))
SECRET = "Flat 4, 17 Acacia Avenue"
YEAR = 365.25


async def evr(argv: list[str]) -> int:
    """The ``evr`` command, run as a user would (in its own thread, with its own loop)."""
    return await asyncio.to_thread(_evr, argv)


def officer_sender(name: str = "alice") -> Sender:
    return Sender("officer", name, Actor(name, "officer"), user_id=1)


async def actions(server: Any, action: str) -> list[AuditEntry]:
    async with server.app[DB]() as db:
        return list(await db.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


async def sealed(server: Any, cid: str) -> EvidenceItem:
    async def probe() -> Any:
        async with server.app[DB]() as db:
            return await db.get(EvidenceItem, item_id(cid))

    return await eventually(probe, what="the chat's seal")


async def close(officer: Any, cid: str) -> None:
    response = await officer.post(f"/api/consultations/{cid}/close")
    assert response.status == 200, await response.text()


async def test_messages_are_kept_in_order_hash_chained(server, staff):
    officer = await staff()
    cid = (await officer.create())["id"]
    chat = server.app[CHAT]
    first = await chat.post(cid, VICTIM, "  My name is Siobhán\r\nspelt S-I-O-B-H-A-N\t ")
    second = await chat.post(cid, officer_sender(), "Thank you.\x00\u202e")
    assert first["type"] == "chat" and first["from"] == {"role": "victim", "name": "Sam"}
    assert first["text"] == "My name is Siobhán\nspelt S-I-O-B-H-A-N"  # trimmed, CRLF a newline, no tab
    assert second["text"] == "Thank you." and second["from"] == {"role": "officer", "name": "alice"}
    assert await chat.transcript(cid) == [{k: v for k, v in m.items() if k != "type"} for m in (first, second)]
    async with server.app[DB]() as db:
        rows = list(await db.scalars(select(ChatMessage).where(ChatMessage.consultation_id == cid)
                                     .order_by(ChatMessage.seq)))
    assert [r.seq for r in rows] == [0, 1]
    assert rows[0].prev_hash == GENESIS and rows[1].prev_hash == rows[0].hash and rows[0].hash != rows[1].hash
    assert rows[1].sender_user_id == 1


async def test_concurrent_posts_make_one_chain(server, staff):
    officer = await staff()
    cid = (await officer.create())["id"]
    chat = server.app[CHAT]
    await asyncio.gather(*(chat.post(cid, VICTIM, f"message {n}") for n in range(12)))
    # A second writer (another process's service) chains onto what the first kept.
    other = Chat(chat.clock, chat.db, chat.store, chat.key, chat.audit)
    await asyncio.gather(other.post(cid, VICTIM, "from elsewhere"), chat.post(cid, VICTIM, "and here"))
    async with server.app[DB]() as db:
        rows = list(await db.scalars(select(ChatMessage).where(ChatMessage.consultation_id == cid)
                                     .order_by(ChatMessage.seq)))
    assert [r.seq for r in rows] == list(range(14))
    assert all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:], strict=False))


@pytest.mark.parametrize(("text", "code"), [
    ("x" * (MAX_CHARS + 1), "chat_too_long"), ("", "chat_empty"), (" \n\t\x01 ", "chat_empty"),
    (None, "bad_chat"), (42, "bad_chat"), (["text"], "bad_chat"),
])
async def test_bad_messages_are_refused_with_their_code(server, staff, text, code):
    officer = await staff()
    cid = (await officer.create())["id"]
    with pytest.raises(ChatError) as refused:
        await server.app[CHAT].post(cid, VICTIM, text)
    assert refused.value.code == code and refused.value.message
    assert await server.app[CHAT].transcript(cid) == []
    assert len((await server.app[CHAT].post(cid, VICTIM, "x" * MAX_CHARS))["text"]) == MAX_CHARS


async def test_a_closed_consultation_takes_no_chat(server, staff):
    officer = await staff()
    cid = (await officer.create())["id"]
    await close(officer, cid)
    with pytest.raises(ChatError) as refused:
        await server.app[CHAT].post(cid, VICTIM, "too late")
    assert refused.value.code == "closed"
    assert await server.app[CHAT].seal(cid) is None  # nothing to seal: no item, no empty transcript
    async with server.app[DB]() as db:
        assert await db.get(EvidenceItem, item_id(cid)) is None


async def test_the_transcript_is_sealed_at_close_and_verifies(server, staff, settings, tmp_path, capsys):
    officer = await staff()
    cid = (await officer.create())["id"]
    for n, text in enumerate(("Can you spell the street?", SECRET, "Thank you")):
        await server.app[CHAT].post(cid, officer_sender() if n % 2 == 0 else VICTIM, text)
    not_yet = await officer.get(f"/api/consultations/{cid}/chat/transcript?reason=disclosure")
    assert not_yet.status == 404 and (await not_yet.json())["error"]["code"] == "no_transcript"
    await close(officer, cid)
    item = await sealed(server, cid)
    assert item.kind == "chat" and item.prefix == prefix(cid) and item.sha256
    seal = await actions(server, "chat.seal")
    assert [(e.object, e.consultation_id, e.details["messages"]) for e in seal] == [(f"chat:{item.id}", cid, 3)]
    assert SECRET not in json.dumps(seal[0].details)

    url = f"/api/consultations/{cid}/chat/transcript"
    refused = await officer.get(url)
    assert refused.status == 422 and (await refused.json())["error"]["code"] == "reason_required"
    response = await officer.get(url + "?reason=Disclosure to CPS, case 44")
    assert response.status == 200 and response.headers["Content-Type"] == "application/zip"
    archive = tmp_path / "chat.zip"
    archive.write_bytes(await response.read())
    exported = await actions(server, "chat.export")
    assert [(e.actor, e.reason) for e in exported] == [("alice", "Disclosure to CPS, case 44")]
    assert set(zipfile.ZipFile(archive).namelist()) == {"transcript.json", "transcript.sig", "public_key.pem",
                                                        "HOW-TO-VERIFY.txt"}
    document = json.loads(zipfile.ZipFile(archive).read("transcript.json"))
    assert document["consultation"]["id"] == cid and [e["text"] for e in document["entries"]][1] == SECRET
    assert document["head"] == document["entries"][-1]["hash"]
    assert (await verify(ZipPackage(archive))).messages == 3
    assert await evr(["chat", "verify", str(archive)]) == 0
    assert f"OK: the chat transcript of consultation {cid} is intact: 3 message(s)" in capsys.readouterr().out

    unpacked = tmp_path / "unpacked"

    def fresh() -> Path:
        shutil.rmtree(unpacked, ignore_errors=True)
        zipfile.ZipFile(archive).extractall(unpacked)
        return unpacked

    assert await evr(["chat", "verify", str(fresh())]) == 0
    assert await evr(["chat", "verify", str(fresh() / "transcript.json")]) == 0
    capsys.readouterr()
    # A message's text changed, its hash left: the signature fails first...
    d = fresh()
    edited = json.loads((d / "transcript.json").read_text())
    edited["entries"][1]["text"] = "Flat 5"
    (d / "transcript.json").write_text(json.dumps(edited, sort_keys=True, indent=1, ensure_ascii=False) + "\n")
    assert await evr(["chat", "verify", str(d)]) == 1
    assert "FAILED: transcript.json: the signature does not match" in capsys.readouterr().out
    # ...and re-signed by whoever changed it (with their own key), the chain names the message.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from evr.keys import public_pem

    forger = Ed25519PrivateKey.generate()
    (d / "transcript.sig").write_bytes(forger.sign((d / "transcript.json").read_bytes()))
    (d / "public_key.pem").write_bytes(public_pem(forger.public_key()))
    assert await evr(["chat", "verify", str(d)]) == 1
    assert "FAILED: transcript.json: message 1 was altered" in capsys.readouterr().out
    with pytest.raises(Problem, match="not the key you trust"):
        await verify(DirPackage(d), server.app[CHAT].key.public_key())
    # A message removed (and re-signed): the next one no longer follows.
    edited = json.loads(zipfile.ZipFile(archive).read("transcript.json"))
    del edited["entries"][1]
    (d / "transcript.json").write_text(json.dumps(edited))
    (d / "transcript.sig").write_bytes(forger.sign((d / "transcript.json").read_bytes()))
    assert await evr(["chat", "verify", str(d)]) == 1
    assert "FAILED: transcript.json: message 1 is out of place" in capsys.readouterr().out
    # The stored original, by consultation id, with the service's own key.
    assert await evr(["chat", "verify", "--data", str(settings.data_dir), cid]) == 0
    assert "intact: 3 message(s)" in capsys.readouterr().out
    assert await evr(["chat", "verify", "--data", str(settings.data_dir), item_id(cid)]) == 1
    assert "no sealed chat transcript" in capsys.readouterr().out


async def test_a_failed_seal_is_done_at_the_next_start_and_only_once(server, staff, monkeypatch, caplog):
    officer = await staff()
    cid = (await officer.create())["id"]
    chat = server.app[CHAT]
    await chat.post(cid, VICTIM, SECRET)

    async def broken(self: Chat, base: str, body: bytes, head: str) -> bytes:
        raise OSError("store unreachable")

    monkeypatch.setattr(Chat, "_keep", broken)
    with caplog.at_level(logging.INFO):
        await close(officer, cid)
        await chat.tasks.wait()
    assert any("sealing failed (OSError)" in r.getMessage() for r in caplog.records)
    async with server.app[DB]() as db:
        assert await db.get(EvidenceItem, item_id(cid)) is None
    monkeypatch.undo()
    assert await chat.recover() == 1  # what a start does
    item = await sealed(server, cid)
    assert await chat.recover() == 0 and await chat.seal(cid) == item.id  # idempotent
    assert len(await actions(server, "chat.seal")) == 1
    assert await server.app[STORE].keys(prefix(cid)) == [prefix(cid) + "transcript.json",
                                                          prefix(cid) + "transcript.sig"]


async def test_a_seal_cut_short_after_storing_is_finished_with_what_was_stored(server, staff):
    officer = await staff()
    cid = (await officer.create())["id"]
    chat = server.app[CHAT]
    await chat.post(cid, VICTIM, "one")
    async with server.app[DB]() as db:  # closed without the seal (a stop right after the close)
        consultation = await db.get(Consultation, cid)
        consultation.status = "closed"
        await db.commit()
    # The transcript stored, then a crash before the item's row: the next seal completes it.
    from evr import transcripts
    from evr.keys import fingerprint

    async with server.app[DB]() as db:
        rows = list(await db.scalars(select(ChatMessage).where(ChatMessage.consultation_id == cid)))
        consultation = await db.get(Consultation, cid)
    entries = Chat._entries(cid, rows)
    body = transcripts.build({"id": cid, "cad_ref": consultation.cad_ref, "closed_at": None}, entries,
                             fingerprint(chat.key.public_key()))
    await server.app[STORE].add_bytes(prefix(cid) + "transcript.json", body)
    assert await chat.seal(cid) == item_id(cid)
    stored = await server.app[STORE].read_bytes(prefix(cid) + "transcript.json")
    assert stored == body
    async with server.app[DB]() as db:
        assert (await db.get(EvidenceItem, item_id(cid))).sha256 is not None


async def test_staff_read_is_audit_logged_the_link_reads_and_others_get_404(server, staff, new_client):
    officer = await staff()
    created = await officer.create()
    cid = created["id"]
    await server.app[CHAT].post(cid, VICTIM, SECRET)
    response = await officer.get(f"/api/consultations/{cid}/chat")
    assert response.status == 200, await response.text()
    messages = (await response.json())["messages"]
    assert [(m["from"], m["text"]) for m in messages] == [({"role": "victim", "name": "Sam"}, SECRET)]
    assert set(messages[0]) == {"id", "from", "text", "at"}
    views = await actions(server, "chat.view")
    assert [(e.actor, e.object, e.consultation_id) for e in views] == [("alice", f"chat:{item_id(cid)}", cid)]

    other = await staff("bob", "officer")
    assert (await other.get(f"/api/consultations/{cid}/chat")).status == 404
    assert (await other.get(f"/api/consultations/{cid}/chat/transcript?reason=x")).status == 404
    sergeant = await staff("sarah", "sergeant")
    assert (await sergeant.get(f"/api/consultations/{cid}/chat")).status == 200
    assert len(await actions(server, "chat.view")) == 2

    phone = await new_client()
    path = link_path(created["join_url"])
    unclaimed = await phone.get(path + "/chat")
    assert unclaimed.status == 403 and (await unclaimed.json())["error"]["code"] == "link_not_claimed"
    assert (await claim(phone, path)).status == 200
    answer = await phone.get(path + "/chat")
    assert answer.status == 200 and (await answer.json())["messages"] == messages
    stranger = await new_client()
    assert (await stranger.get(path + "/chat")).status == 403  # the link is bound to the phone

    invited = await officer.post(f"/api/consultations/{cid}/guests", {"role": "interpreter", "name": "Ana"})
    assert invited.status == 201, await invited.text()
    laptop = await new_client()
    guest_path = link_path((await invited.json())["join_url"])
    assert (await claim(laptop, guest_path)).status == 200
    answer = await laptop.get(guest_path + "/chat")
    assert answer.status == 200 and (await answer.json())["messages"] == messages


async def test_location_is_checked_kept_shown_to_staff_and_logged_without_coordinates(server, staff):
    officer = await staff()
    cid = (await officer.create())["id"]
    assert (await officer.consultation(cid))["location"] is None
    locations = server.app[LOCATIONS]
    for bad in ({"lat": 200, "lon": 0, "accuracy_m": 5}, {"lat": 0, "lon": -180.5, "accuracy_m": 5},
                {"lat": 0, "lon": 0, "accuracy_m": 100001}, {"lat": 0, "lon": 0, "accuracy_m": -1},
                {"lat": True, "lon": 0, "accuracy_m": 5}, {"lat": "51.5", "lon": 0, "accuracy_m": 5},
                {"lat": float("nan"), "lon": 0, "accuracy_m": 5}, {"lon": 0, "accuracy_m": 5}, []):
        with pytest.raises(LocationError) as refused:
            await locations.share(cid, Actor("victim", "victim"), bad)
        assert refused.value.code == "bad_location", bad
    assert await actions(server, "location.share") == []
    kept = await locations.share(cid, Actor("victim", "victim"), {"lat": 50.7184, "lon": -1.8806, "accuracy_m": 12})
    assert kept["lat"] == 50.7184 and kept["lon"] == -1.8806 and kept["accuracy_m"] == 12 and kept["at"]
    assert (await officer.consultation(cid))["location"] == kept
    shares = await actions(server, "location.share")
    assert [(e.actor, e.consultation_id, e.details) for e in shares] == [("victim", cid, {"accuracy_m": 12.0})]
    await close(officer, cid)
    with pytest.raises(LocationError) as refused:
        await locations.share(cid, Actor("victim", "victim"), {"lat": 1, "lon": 1, "accuracy_m": 1})
    assert refused.value.code == "closed"


async def test_disposal_removes_the_transcript_its_messages_and_the_location(server, staff, settings, clock):
    settings.session_ttl_hours = 24 * 365 * 40  # staff stay signed in across the years the clock skips
    officer = await staff("olive", "officer")
    records = await staff("rita", "records")
    cid = (await officer.create())["id"]
    response = await officer.client.put(f"/api/consultations/{cid}/retention", headers=officer.headers(),
                                        json={"class": "group3", "reason": "offence type per crime report"})
    assert response.status == 200, await response.text()
    await server.app[CHAT].post(cid, VICTIM, SECRET)
    await server.app[LOCATIONS].share(cid, Actor("victim", "victim"), {"lat": 50.7, "lon": -1.9, "accuracy_m": 9})
    await close(officer, cid)
    item = await sealed(server, cid)
    listed = await records.get(f"/api/retention/consultations/{cid}/items")  # the records console's list
    assert [(i["item_id"], i["kind"], i["rule"]) for i in (await listed.json())["items"]] == [
        (item.id, "chat", "group3")]
    shown = await (await records.get(f"/api/retention/items/{item.id}")).json()
    assert shown["objects"] == [prefix(cid) + "transcript.json", prefix(cid) + "transcript.sig"]
    assert "chat.seal" in [e["action"] for e in shown["audit"]]
    clock.advance(days=6 * YEAR + 2)
    done = await records.post("/api/retention/dispose", {"due": True, "execute": True})
    assert done.status == 200, await done.text()
    assert (await done.json())["disposed"] == [item.id]
    assert await server.app[STORE].keys(prefix(cid)) == []
    async with server.app[DB]() as db:
        assert await db.scalar(select(func.count()).select_from(ChatMessage)
                               .where(ChatMessage.consultation_id == cid)) == 0
        assert (await db.get(Consultation, cid)).location is None
    erased = await actions(server, "evidence.erase")
    assert [(e.object, e.details["chat_messages"]) for e in erased] == [(f"chat:{item.id}", 1)]
    assert [e.consultation_id for e in await actions(server, "location.erase")] == [cid]
    assert (await officer.consultation(cid))["location"] is None
    assert (await (await officer.get(f"/api/consultations/{cid}/chat")).json())["messages"] == []
    gone = await officer.get(f"/api/consultations/{cid}/chat/transcript?reason=disclosure")
    assert gone.status == 404
    assert await server.app[CHAT].recover() == 0  # nothing left to seal again


async def test_no_chat_text_or_coordinates_in_the_logs(server, staff, caplog, monkeypatch):
    officer = await staff()
    cid = (await officer.create())["id"]
    with caplog.at_level(logging.DEBUG):
        await server.app[CHAT].post(cid, VICTIM, SECRET)
        await server.app[LOCATIONS].share(cid, Actor("victim", "victim"),
                                          {"lat": 51.123456, "lon": -0.654321, "accuracy_m": 7})
        await officer.get(f"/api/consultations/{cid}/chat")
        await close(officer, cid)
        await sealed(server, cid)
        # A database error while posting: its text would carry the message; the log has its type only.
        from sqlalchemy.exc import OperationalError

        async def failing(*args: Any, **kwargs: Any) -> Any:
            raise OperationalError("INSERT ...", {"text": SECRET}, Exception("disk full"))

        monkeypatch.setattr(Chat, "_insert", failing)
        with pytest.raises(ChatError) as refused:
            await server.app[CHAT].post(cid, VICTIM, SECRET)
        assert refused.value.code == "chat_failed"
    text = "\n".join(r.getMessage() + (str(r.exc_info) if r.exc_info else "") for r in caplog.records)
    assert "sealed (1 message(s))" in text
    for secret in (SECRET, "Acacia", "51.12", "0.65"):
        assert secret not in text
    stored = io.BytesIO()  # the audit log holds neither
    async with server.app[DB]() as db:
        for entry in await db.scalars(select(AuditEntry)):
            stored.write(json.dumps([entry.details, entry.reason, entry.object]).encode())
    assert b"Acacia" not in stored.getvalue() and b"51.12" not in stored.getvalue()
