"""MG11 statements: drafted by the officer (every differing version kept), sent to the
victim's page, signed there, sealed as a PAdES PDF with pyHanko and verified."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
from datetime import datetime, timezone

import pytest
from PIL import Image, ImageDraw
from sqlalchemy import select

from evr.cli import main as _evr
from evr.config import Settings
from evr.db import AuditEntry, Consultation, EvidenceItem, Statement, StatementSignature
from evr.http import DB, STATEMENTS, STORE
from evr.statements import layout, signing
from evr.statements.content import parse

DRAFT = {
    "witness": {"name": "Jane Émilie Smith", "over_18": True, "occupation": "Nurse"},
    "text": "On Friday 20 November 2026 at about 22:15 I was walking home along the High Street.\n\n"
            "A man I did not know took my bag from my shoulder and ran towards the station. I produce "
            "a photograph of the bag as exhibit JS/1.",
    "exhibits": [{"ref": "JS/1", "description": "photograph of the bag"}],
    "rear": {"contact": "07700 900123", "preferred_contact": "text message", "dates_to_avoid": "24-28 December",
             "consent_medical_access": True, "consent_medical_disclosure": False, "vps_offered": True,
             "special_measures": "none", "court_willing": True, "taken_by": "PC 1234 Alice",
             "taken_where": "EVR video call", "taken_when": "21/11/2026 13:00"},
}


async def evr(argv: list[str]) -> int:
    """The ``evr`` command, run as a user would (in its own thread, with its own loop)."""
    return await asyncio.to_thread(_evr, argv)


def signature_png(blank: bool = False, size: tuple[int, int] = (600, 200)) -> str:
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    if not blank:
        ImageDraw.Draw(image).line([(20, 150), (200, 40), (380, 160), (580, 50)], fill=(10, 10, 80, 255), width=5)
    out = io.BytesIO()
    image.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def signing_body(**extra):
    return {"typed_name": "Jane Émilie Smith", "signature_png": signature_png(), "declaration_accepted": True,
            **extra}


async def drafted(link, **changes):
    c = await link()
    response = await c.officer.post(f"/api/consultations/{c.id}/statements", {**DRAFT, **changes})
    assert response.status == 201, await response.text()
    body = await response.json()
    return c, body["id"], body


async def sent(link, **changes):
    c, sid, _ = await drafted(link, **changes)
    response = await c.officer.post(f"/api/consultations/{c.id}/statements/{sid}/send")
    assert response.status == 200, await response.text()
    assert (await response.json())["status"] == "awaiting_signature"
    return c, sid


async def put(c, sid, body):
    return await c.officer.client.put(f"/api/consultations/{c.id}/statements/{sid}", json=body,
                                      headers=c.officer.headers())


async def sign(c, sid, body=None):
    return await c.phone.post(f"{c.path}/statements/{sid}/sign", json=body or signing_body())


async def actions(server, object_):
    async with server.app[DB]() as db:
        return [(e.action, e.actor) for e in await db.scalars(
            select(AuditEntry).where(AuditEntry.object == object_).order_by(AuditEntry.id))]


async def test_drafted_sent_signed_sealed_and_verified(link, server, settings, monkeypatch):
    c, sid, created = await drafted(link)
    assert created["status"] == "draft" and created["version"] == 1
    # The officer's console follows each step live.
    socket = await c.officer.client.ws_connect(f"/api/consultations/{c.id}/ws")
    send = await c.officer.post(f"/api/consultations/{c.id}/statements/{sid}/send",
                                {"identification": "Checked against her driving licence on video"})
    assert send.status == 200 and (await send.json())["status"] == "awaiting_signature"

    shown = await (await c.phone.get(f"{c.path}/statements/{sid}")).json()
    assert shown["text"] == DRAFT["text"] and shown["status"] == "awaiting_signature"
    assert shown["pages"] == 1 and "(consisting of 1 page each signed by me)" in shown["declaration"]
    statement_pages = [p for p in shown["sheets"] if p["kind"] == "statement"]
    assert len(statement_pages) == shown["pages"] and shown["sheets"][-1]["kind"] == "rear"
    rows = [r for p in shown["sheets"] for r in p["rows"]]
    assert {"kind": "sign", "label": "Signature:", "fill": "signature"} in rows
    preview = await c.phone.get(shown["preview_url"])
    assert preview.status == 200 and preview.content_type == "application/pdf"
    assert hashlib.sha256(await preview.read()).hexdigest() == shown["document_sha256"]

    signed = await sign(c, sid, signing_body(document_sha256=shown["document_sha256"]))
    assert signed.status == 200, await signed.text()
    result = await signed.json()
    assert result["status"] == "signed" and len(result["sha256"]) == 64

    pdf_response = await c.officer.get(f"/api/consultations/{c.id}/statements/{sid}/pdf")
    assert pdf_response.status == 200 and pdf_response.content_type == "application/pdf"
    pdf = await pdf_response.read()
    assert hashlib.sha256(pdf).hexdigest() == result["sha256"]
    roots = signing.trust_roots(settings)
    check = await signing.validate(pdf, roots)
    assert check.ok, check.message

    # The signing record: the document hash, the device binding, who witnessed, how identified.
    async with server.app[DB]() as db:
        record = await db.get(StatementSignature, sid)
        consultation = await db.get(Consultation, c.id)
        item = await db.get(EvidenceItem, sid)
    assert record.document_sha256 == result["sha256"] and record.shown_sha256 == shown["document_sha256"]
    assert record.binding_hash == consultation.binding_hash and record.client_ip
    assert record.user_agent and record.officer == "alice" and record.pages == 1
    assert record.identification == "Checked against her driving licence on video"
    assert record.declaration == shown["declaration"] and record.typed_name == "Jane Émilie Smith"
    assert (item.kind, item.sha256, item.size) == ("statement", result["sha256"], len(pdf))
    store = server.app[STORE]
    assert await store.read_bytes(f"statements/{c.id}/{sid}/statement.pdf") == pdf
    kept = json.loads(await store.read_bytes(f"statements/{c.id}/{sid}/signing-record.json"))
    assert kept["document_sha256"] == result["sha256"] and kept["link_binding_sha256"] == consultation.binding_hash
    png = base64.b64decode(signing_body()["signature_png"].split(",", 1)[1])
    assert await store.read_bytes(f"statements/{c.id}/{sid}/signature.png") == png

    statuses = []
    while len(statuses) < 2:
        message = json.loads((await socket.receive(timeout=5)).data)
        if message["type"] == "statement":
            statuses.append(message["status"])
    assert statuses == ["awaiting_signature", "signed"]
    await socket.close()

    logged = await actions(server, f"statement:{sid}")
    for step in [("statement.create", "alice"), ("statement.send", "alice"), ("statement.view", "victim"),
                 ("statement.preview", "victim"), ("statement.sign", "victim"), ("statement.seal", "system"),
                 ("statement.download", "alice")]:
        assert step in logged

    # evr statement verify: the sealed file passes; one changed byte fails; so does a
    # validly signed file that is not the one the signing record names.
    if settings.database_url:
        monkeypatch.setenv("EVR_DATABASE_URL", settings.database_url)
    data = str(settings.data_dir)
    good = settings.data_dir.parent / "statement.pdf"
    good.write_bytes(pdf)
    assert await evr(["statement", "verify", str(good), "--data", data]) == 0
    for offset in (len(pdf) // 2, 200, len(pdf) - 10):
        bad = bytearray(pdf)
        bad[offset] ^= 0x01
        changed = settings.data_dir.parent / f"changed-{offset}.pdf"
        changed.write_bytes(bytes(bad))
        assert await evr(["statement", "verify", str(changed), "--data", data]) == 1
    service = server.app[STATEMENTS]
    doc = layout.Document(sid, 1, "CAD-2026-000123", "", "alice", parse(DRAFT))
    resealed = await signing.seal(layout.render(doc, layout.paginate(doc), datetime.now(timezone.utc)),
                                  service.identity, reason="r", location="l", name="n")
    assert (await signing.validate(resealed, roots)).ok  # the service's own key...
    other = settings.data_dir.parent / "resealed.pdf"
    other.write_bytes(resealed)
    assert await evr(["statement", "verify", str(other), "--data", data]) == 1  # ...but not the record's file


async def test_a_pdf_signed_by_another_key_fails(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    mine = signing.load_identity(settings)
    elsewhere = Settings(data_dir=tmp_path / "elsewhere")
    theirs = signing.load_identity(elsewhere)
    doc = layout.Document("0b7a8d6e-1111-4222-8333-444455556666", 1, "CAD-1", "", "alice", parse(DRAFT))
    pdf = layout.render(doc, layout.paginate(doc), datetime.now(timezone.utc))
    forged = await signing.seal(pdf, theirs, reason="r", location="l", name="n")
    check = await signing.validate(forged, mine.trust_roots)
    assert not check.ok and "trusted root" in check.message
    path = tmp_path / "forged.pdf"
    path.write_bytes(forged)
    assert await evr(["statement", "verify", str(path), "--data", str(settings.data_dir)]) == 1
    assert await evr(["statement", "verify", str(path), "--data", str(settings.data_dir),
                      "--ca", str(tmp_path / "elsewhere" / signing.CA_FILE)]) == 0
    unsigned = tmp_path / "unsigned.pdf"
    unsigned.write_bytes(pdf)
    assert await evr(["statement", "verify", str(unsigned), "--data", str(settings.data_dir)]) == 1


async def test_every_differing_version_is_kept_and_a_change_cancels_the_signature(link, server):
    c, sid, _ = await drafted(link)
    same = await put(c, sid, DRAFT)
    assert (await same.json())["version"] == 1 and (await same.json())["saved"] is False
    second = {**DRAFT, "text": DRAFT["text"] + "\n\nHe was about 30, white, wearing a red hoodie."}
    saved = await (await put(c, sid, {**second, "version": 1})).json()
    assert saved["version"] == 2 and saved["saved"] is True
    stale = await put(c, sid, {**DRAFT, "version": 1})
    assert stale.status == 409 and (await stale.json())["error"]["code"] == "version_conflict"

    assert (await c.officer.post(f"/api/consultations/{c.id}/statements/{sid}/send")).status == 200
    third = {**second, "witness": {**DRAFT["witness"], "occupation": "Staff nurse"}}
    changed = await (await put(c, sid, third)).json()
    assert (changed["status"], changed["version"], changed["signature_cancelled"]) == ("draft", 3, True)
    refused = await sign(c, sid)
    assert refused.status == 409 and (await refused.json())["error"]["code"] == "not_awaiting_signature"
    assert (await c.phone.get(f"{c.path}/statements/{sid}")).status == 409

    full = await (await c.officer.get(f"/api/consultations/{c.id}/statements/{sid}")).json()
    assert [v["version"] for v in full["versions"]] == [1, 2, 3]
    assert [e["kind"] for e in full["events"]] == ["created", "saved", "sent", "signature_cancelled", "saved"]
    first = await (await c.officer.get(f"/api/consultations/{c.id}/statements/{sid}/versions/1")).json()
    assert first["content"]["text"] == DRAFT["text"]
    for bad in ("0", "-1", "x", "4", "²"):
        missing = await c.officer.get(f"/api/consultations/{c.id}/statements/{sid}/versions/{bad}")
        assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found", bad

    # Sent again, the victim signs version 3, exactly what she was shown.
    assert (await c.officer.post(f"/api/consultations/{c.id}/statements/{sid}/send")).status == 200
    stale_view = await sign(c, sid, signing_body(document_sha256="0" * 64))
    assert stale_view.status == 409 and (await stale_view.json())["error"]["code"] == "statement_changed"
    assert (await sign(c, sid)).status == 200
    after = await put(c, sid, DRAFT)
    assert after.status == 409 and (await after.json())["error"]["code"] == "statement_signed"


async def test_the_victim_asks_for_a_change(link, server):
    c, sid = await sent(link)
    empty = await c.phone.post(f"{c.path}/statements/{sid}/change", json={"message": " "})
    assert empty.status == 422
    asked = await c.phone.post(f"{c.path}/statements/{sid}/change",
                               json={"message": "It was 22:45, not 22:15."})
    assert asked.status == 200 and (await asked.json())["status"] == "draft"
    full = await (await c.officer.get(f"/api/consultations/{c.id}/statements/{sid}")).json()
    assert full["status"] == "draft" and full["change_request"] == "It was 22:45, not 22:15."
    assert (await sign(c, sid)).status == 409
    again = await c.phone.post(f"{c.path}/statements/{sid}/change", json={"message": "again"})
    assert again.status == 409
    assert ("statement.change_request", "victim") in await actions(server, f"statement:{sid}")


@pytest.mark.parametrize("case, code", [
    ("empty", "empty_signature"), ("blank_string", "invalid_signature"), ("oversize", "signature_too_large"),
    ("jpeg", "invalid_signature"), ("not_base64", "invalid_signature"), ("huge_canvas", "signature_too_large"),
    ("no_declaration", "declaration_not_accepted"), ("no_name", "invalid_typed_name"),
])
async def test_bad_signatures_are_refused_and_lose_nothing(link, server, case, code):
    c, sid = await sent(link)
    jpeg = io.BytesIO()
    Image.new("RGB", (300, 100), "white").save(jpeg, "JPEG")
    noise = io.BytesIO()
    Image.frombytes("RGB", (600, 600), os.urandom(600 * 600 * 3)).save(noise, "PNG")  # ~1 MiB
    body = {
        "empty": signing_body(signature_png=signature_png(blank=True)),
        "blank_string": signing_body(signature_png=""),
        "oversize": signing_body(signature_png="data:image/png;base64," + base64.b64encode(noise.getvalue()).decode()),
        "jpeg": signing_body(signature_png="data:image/png;base64," + base64.b64encode(jpeg.getvalue()).decode()),
        "not_base64": signing_body(signature_png="data:image/png;base64,!!!"),
        "huge_canvas": signing_body(signature_png=signature_png(size=(5000, 20))),
        "no_declaration": signing_body(declaration_accepted=False),
        "no_name": signing_body(typed_name="  "),
    }[case]
    refused = await sign(c, sid, body)
    assert refused.status == 422, await refused.text()
    assert (await refused.json())["error"]["code"] == code
    # Nothing lost: still waiting, and a good signature seals it.
    assert (await (await c.phone.get(f"{c.path}/statements/{sid}")).json())["status"] == "awaiting_signature"
    assert (await sign(c, sid)).status == 200


async def test_signing_needs_a_sent_statement_and_an_open_link(link, server, new_client):
    c, sid, _ = await drafted(link)
    not_sent = await sign(c, sid)
    assert not_sent.status == 409 and (await not_sent.json())["error"]["code"] == "not_awaiting_signature"
    assert (await c.phone.get(f"{c.path}/statements/{sid}")).status == 409  # drafts are not shown
    assert (await c.officer.post(f"/api/consultations/{c.id}/statements/{sid}/send")).status == 200
    other = await new_client()
    elsewhere = await other.post(f"{c.path}/statements/{sid}/sign", json=signing_body())
    assert elsewhere.status == 403 and (await elsewhere.json())["error"]["code"] == "link_in_use"
    unknown = await c.phone.get(f"/j/{'x' * 43}/statements/{sid}")
    assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "unknown_link"
    cross = await c.phone.post(f"{c.path}/statements/{sid}/sign", json=signing_body(),
                               headers={"Origin": "https://evil.example"})
    assert cross.status == 403
    assert (await c.officer.post(f"/api/consultations/{c.id}/close")).status == 200
    closed = await sign(c, sid)
    assert closed.status == 410 and (await closed.json())["error"]["code"] == "link_closed"
    async with server.app[DB]() as db:
        assert (await db.get(Statement, sid)).status == "awaiting_signature"
    undownloadable = await c.officer.get(f"/api/consultations/{c.id}/statements/{sid}/pdf")
    assert undownloadable.status == 409


async def test_two_signatures_at_once_seal_one_statement(link, server):
    c, sid = await sent(link)
    first, second = await asyncio.gather(sign(c, sid), sign(c, sid))
    assert sorted([first.status, second.status]) == [200, 409]
    async with server.app[DB]() as db:
        items = list(await db.scalars(select(EvidenceItem).where(EvidenceItem.kind == "statement")))
    assert len(items) == 1


async def test_drafts_are_checked_and_only_call_roles_write(link, server, staff):
    c = await link()
    base = f"/api/consultations/{c.id}/statements"
    for body, field in [
        ({**DRAFT, "witness": {"name": "A", "over_18": "yes"}}, "witness.over_18"),
        ({**DRAFT, "witness": {"name": "A", "over_18": False, "age": 30}}, "witness.age"),
        ({**DRAFT, "text": "I saw 中文 written on it"}, "text"),
        ({**DRAFT, "exhibits": [{"ref": "../etc"}]}, "exhibits[0].ref"),
        ({**DRAFT, "rear": {"court_willing": "maybe"}}, "rear.court_willing"),
    ]:
        response = await c.officer.post(base, body)
        assert response.status == 422, body
        assert field in (await response.json())["error"]["fields"]
    # An incomplete draft saves (autosave) but cannot be sent.
    partial = await c.officer.post(base, {"witness": {"name": "A"}, "text": ""})
    assert partial.status == 201
    sid = (await partial.json())["id"]
    refused = await c.officer.post(f"{base}/{sid}/send")
    assert refused.status == 422 and set((await refused.json())["error"]["fields"]) == {"witness.over_18", "text"}
    # A child witness: the age is printed instead of "over 18".
    child = await c.officer.post(base, {**DRAFT, "witness": {"name": "Tom", "over_18": False, "age": 12}})
    assert child.status == 201

    records = await staff("rita", "records")
    assert (await records.post(base, DRAFT)).status in (403, 404)
    sergeant = await staff("sam", "sergeant")
    assert (await sergeant.get(base)).status == 200
    assert (await sergeant.get(f"{base}/{sid}/pdf")).status == 409


async def test_a_stuck_seal_waits_for_the_signature_again(link, server):
    c, sid = await sent(link)
    async with server.app[DB]() as db:
        row = await db.get(Statement, sid)
        row.status = "sealing"
        await db.commit()
    assert (await sign(c, sid)).status == 409
    assert await server.app[STATEMENTS].recover() == 1
    assert (await sign(c, sid)).status == 200


async def test_a_seal_stopped_after_its_pdf_was_stored_is_finished_and_logged(link, server, monkeypatch):
    c, sid = await sent(link)
    service = server.app[STATEMENTS]

    async def stop(*args, **kwargs):
        raise RuntimeError("the process stopped here")

    monkeypatch.setattr(service, "_signed", stop)
    assert (await sign(c, sid)).status == 500
    monkeypatch.undo()
    async with server.app[DB]() as db:  # what an unclean stop leaves
        row = await db.get(Statement, sid)
        row.status = "sealing"
        await db.commit()
    assert await service.recover() == 1
    async with server.app[DB]() as db:
        row = await db.get(Statement, sid)
        signature = await db.get(StatementSignature, sid)
    pdf = await server.app[STORE].read_bytes(f"statements/{c.id}/{sid}/statement.pdf")
    assert row.status == "signed" and row.sha256 == signature.document_sha256 == hashlib.sha256(pdf).hexdigest()
    assert ("statement.seal", "system") in await actions(server, f"statement:{sid}")


def test_the_declaration_names_the_real_page_count_and_signing_moves_nothing():
    long = {**DRAFT, "text": "\n\n".join(["I was walking home when a man took my bag and ran off. " * 6] * 25),
            "read_to_witness": {"name": "PC Brown"}}
    doc = layout.Document("0b7a8d6e-1111-4222-8333-444455556666", 2, "CAD-1", "Dorset Police", "alice",
                          parse(long))
    laid = layout.paginate(doc)
    statement_pages = [p for p in laid.pages if p.kind == "statement"]
    assert laid.statement_pages == len(statement_pages) > 2
    assert f"consisting of {laid.statement_pages} pages each signed by me" in laid.declaration
    assert all(p.footer == f"Page {p.number} of {laid.statement_pages}" for p in statement_pages)
    # A signature on every page's footer (drawn by render) and after the last line.
    last = statement_pages[-1].rows
    assert [r.fill for r in last if r.fill][:2] == ["signature", "typed_name"]
    assert f"consisting of {laid.statement_pages} pages" in " ".join(r.text for r in last)
    created = datetime(2026, 11, 21, tzinfo=timezone.utc)
    assert layout.render(doc, laid, created) == layout.render(doc, laid, created)  # the hash shown is stable
    image = Image.new("RGBA", (300, 100))
    ImageDraw.Draw(image).line([(0, 90), (300, 10)], fill="black", width=4)
    png = io.BytesIO()
    image.save(png, "PNG")
    signed = layout.render(doc, laid, created, layout.Signed(png.getvalue(), 300, 100, "Jane", created))
    from pyhanko.pdf_utils.reader import PdfFileReader

    assert len(PdfFileReader(io.BytesIO(signed)).root["/Pages"]["/Kids"]) == len(laid.pages)


async def test_exhibits_from_the_consultations_uploads(link, server):
    from evr.db import Upload

    c = await link()
    now = datetime.now(timezone.utc)
    upload = Upload(id="5d1c2b3a-0000-4000-8000-000000000001", consultation_id=c.id, status="complete",
                    uploaded_by="victim", uploader_role="victim", original_name="bag.jpg", filename="bag.jpg",
                    length=3, offset=3, sha256="ab" * 32, exhibit_ref="JS/2", created_at=now, updated_at=now)
    async with server.app[DB]() as db:
        db.add(upload)
        await db.commit()
    base = f"/api/consultations/{c.id}/statements"
    made = await c.officer.post(base, {**DRAFT, "exhibits": [{"upload_id": upload.id, "description": "the bag"}]})
    assert made.status == 201, await made.text()
    exhibit = (await made.json())["content"]["exhibits"][0]
    assert (exhibit["ref"], exhibit["filename"], exhibit["sha256"]) == ("JS/2", "bag.jpg", "ab" * 32)
    other = await c.officer.create()
    foreign = await c.officer.post(f"/api/consultations/{other['id']}/statements",
                                   {**DRAFT, "exhibits": [{"upload_id": upload.id}]})
    assert foreign.status == 422 and "exhibits[0].upload_id" in (await foreign.json())["error"]["fields"]
    sid = (await made.json())["id"]
    assert (await c.officer.post(f"{base}/{sid}/send")).status == 200
    shown = await (await c.phone.get(f"{c.path}/statements/{sid}")).json()
    lines = " ".join(r.get("text", "") for p in shown["sheets"] for r in p["rows"])
    assert "JS/2 — the bag (file bag.jpg, SHA-256" in lines


async def test_a_configured_force_certificate_signs_and_verifies(tmp_path):
    """A force's own certificate (here made by the same generator in another folder)."""
    settings = Settings(data_dir=tmp_path / "data")
    force = tmp_path / "force"
    signing.generate(force, "Dorset Police")
    settings.statement_cert = str(force / signing.CERT_FILE)
    settings.statement_key = str(force / signing.KEY_FILE)
    with pytest.raises(signing.SigningSetupError, match="statement_trust_roots"):
        signing.load_identity(settings)
    settings.statement_trust_roots = str(force / signing.CA_FILE)
    identity = signing.load_identity(settings)
    assert "Dorset Police" in identity.subject
    assert not (settings.data_dir / signing.CERT_FILE).exists()  # nothing generated when configured
    doc = layout.Document("0b7a8d6e-1111-4222-8333-444455556666", 1, "CAD-1", "Dorset Police", "alice", parse(DRAFT))
    pdf = await signing.seal(layout.render(doc, layout.paginate(doc), datetime.now(timezone.utc)), identity,
                             reason="r", location="l", name="n")
    assert (await signing.validate(pdf, signing.trust_roots(settings))).ok
    signing.generate(tmp_path / "other", "")
    settings.statement_key = str(tmp_path / "other" / signing.KEY_FILE)
    with pytest.raises(signing.SigningSetupError, match="does not belong"):
        signing.load_identity(settings)
