"""Statements under hostile input and faults (issue 11, findings 3 and 11).

Every state change of a statement and its audit entry commit together: with the audit
append failing (``audit_fails``), the statement is as before. Numbers, text and
signature images from outside give a clear 4xx, never a 500, and a PNG declaring a
huge image is refused before a pixel of it is decoded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from sqlalchemy import func, select
from test_statements import DRAFT, drafted, put, sent, sign, signature_png, signing_body

from evr.db import AuditEntry, EvidenceItem, Statement, StatementEvent, StatementSignature, StatementVersion
from evr.errors import ApiError
from evr.http import DB, STATEMENTS, STORE
from evr.statements.api import MAX_VERSION, version_number
from evr.statements.service import MAX_SIGNATURE_BYTES, PNG_PREFIX, check_signature


async def snapshot(server: Any, sid: str) -> dict[str, Any]:
    """What a failed change must leave as it was."""
    async with server.app[DB]() as db:
        row = await db.get(Statement, sid)
        return {
            "status": row.status, "version": row.version, "sha256": row.sha256, "sent_by": row.sent_by,
            "versions": await db.scalar(select(func.count()).select_from(StatementVersion)
                                        .where(StatementVersion.statement_id == sid)),
            "events": await db.scalar(select(func.count()).select_from(StatementEvent)
                                      .where(StatementEvent.statement_id == sid)),
            "signature": await db.get(StatementSignature, sid) is not None,
            "evidence": await db.get(EvidenceItem, sid) is not None,
            "entries": await db.scalar(select(func.count()).select_from(AuditEntry)),
        }


async def count(server: Any, model: Any) -> int:
    async with server.app[DB]() as db:
        return await db.scalar(select(func.count()).select_from(model))


# -- finding 3: a change and its audit entry, together or not at all ---------------------


async def test_a_failed_audit_entry_leaves_no_statement(link, server, audit_fails):
    c = await link()
    before = (await count(server, Statement), await count(server, StatementVersion), await count(server, AuditEntry))
    audit_fails()
    response = await c.officer.post(f"/api/consultations/{c.id}/statements", DRAFT)
    assert response.status == 500
    after = (await count(server, Statement), await count(server, StatementVersion), await count(server, AuditEntry))
    assert after == before


async def test_a_failed_audit_entry_saves_no_new_version(link, server, audit_fails):
    c, sid = await sent(link)  # awaiting a signature: a save would also cancel it
    before = await snapshot(server, sid)
    audit_fails()
    response = await put(c, sid, {**DRAFT, "text": DRAFT["text"] + " It was raining."})
    assert response.status == 500
    assert await snapshot(server, sid) == before
    assert before["status"] == "awaiting_signature" and before["versions"] == 1


async def test_a_failed_audit_entry_sends_nothing(link, server, audit_fails):
    c, sid, _ = await drafted(link)
    before = await snapshot(server, sid)
    audit_fails()
    response = await c.officer.post(f"/api/consultations/{c.id}/statements/{sid}/send")
    assert response.status == 500
    assert await snapshot(server, sid) == before
    assert before["status"] == "draft" and before["sent_by"] is None


async def test_a_failed_audit_entry_asks_for_no_change(link, server, audit_fails):
    c, sid = await sent(link)
    before = await snapshot(server, sid)
    audit_fails()
    response = await c.phone.post(f"{c.path}/statements/{sid}/change", json={"message": "It was 22:45."})
    assert response.status == 500
    assert await snapshot(server, sid) == before
    assert before["status"] == "awaiting_signature"


async def test_a_failed_audit_entry_seals_nothing_and_the_witness_can_sign_again(link, server, monkeypatch):
    c, sid = await sent(link)
    before = await snapshot(server, sid)
    from evr import audit

    real = audit.Appender.add
    failures = {"left": 1}

    def failing_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        entry = real(self, *args, **kwargs)
        if args[1] == "statement.sign" and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("audit write failed (test fault)")
        return entry

    monkeypatch.setattr(audit.Appender, "add", failing_once)
    assert (await sign(c, sid)).status == 500
    after = await snapshot(server, sid)
    assert after == before  # still waiting, no signature row, no evidence item, no entry
    assert after["status"] == "awaiting_signature" and not after["signature"] and not after["evidence"]
    # The failed attempt's files stay in the (add-only) store; a new signature adds its own.
    signed = await sign(c, sid)
    assert signed.status == 200, await signed.text()
    digest = (await signed.json())["sha256"]
    keys = await server.app[STORE].keys(f"statements/{c.id}/{sid}/")
    assert {k.rsplit("/", 1)[1] for k in keys} >= {"statement.pdf", "statement-2.pdf", "signing-record-2.json"}
    pdf = await c.officer.get(f"/api/consultations/{c.id}/statements/{sid}/pdf")
    assert pdf.status == 200 and hashlib.sha256(await pdf.read()).hexdigest() == digest
    async with server.app[DB]() as db:
        entries = [(e.action, e.actor) for e in await db.scalars(
            select(AuditEntry).where(AuditEntry.object == f"statement:{sid}").order_by(AuditEntry.id))]
    assert [e for e in entries if e[0] in ("statement.sign", "statement.seal")] == [
        ("statement.sign", "victim"), ("statement.seal", "system")]


async def test_a_failed_seal_entry_seals_nothing(link, server, audit_fails):
    c, sid = await sent(link)
    before = await snapshot(server, sid)
    audit_fails()
    assert (await sign(c, sid)).status == 500
    assert await snapshot(server, sid) == before


async def test_a_stuck_seal_after_a_failed_attempt_is_finished_from_a_complete_attempt(
        link, server, audit_fails, monkeypatch):
    c, sid = await sent(link)
    audit_fails()
    assert (await sign(c, sid)).status == 500  # its PDF is stored; its transaction was not
    monkeypatch.undo()  # the audit log works again
    async with server.app[DB]() as db:  # then an unclean stop during a second attempt
        row = await db.get(Statement, sid)
        row.status = "sealing"
        await db.commit()
    assert await server.app[STATEMENTS].recover() == 1
    after = await snapshot(server, sid)
    assert after["status"] == "signed" and after["signature"] and after["evidence"]
    pdf = await server.app[STORE].read_bytes(f"statements/{c.id}/{sid}/statement.pdf")
    assert after["sha256"] == hashlib.sha256(pdf).hexdigest()
    async with server.app[DB]() as db:
        entries = [(e.action, e.actor, e.details.get("recovered")) for e in await db.scalars(
            select(AuditEntry).where(AuditEntry.object == f"statement:{sid}").order_by(AuditEntry.id))]
    assert entries[-2:] == [("statement.sign", "victim", True), ("statement.seal", "system", True)]


@pytest.mark.parametrize("path", ["", "/preview"])
async def test_the_victim_sees_nothing_without_its_audit_entry(link, server, audit_fails, path):
    c, sid = await sent(link)
    audit_fails()
    response = await c.phone.get(f"{c.path}/statements/{sid}{path}")
    assert response.status == 500
    assert "application/pdf" not in response.headers.get("Content-Type", "")
    assert DRAFT["text"][:40] not in await response.text()


# -- finding 11: numbers and text from outside ------------------------------------------


@pytest.mark.parametrize("number", ["\u00b2", "\u0661", "\u0663", "\uff11", "\u0661\u0662", "99999999999999999999999", str(2**31),
                                    "-1", "0", "+1", " 1", "1.0", "%ED%A0%80", "1e3"])
async def test_bad_version_numbers_are_404(link, server, number):
    c, sid, _ = await drafted(link)
    from yarl import URL

    url = URL(f"/api/consultations/{c.id}/statements/{sid}/versions/{number}", encoded="%" in number)
    response = await c.officer.client.get(url)
    assert response.status == 404, await response.text()
    assert (await response.json())["error"]["code"] == "not_found"
    good = await c.officer.get(f"/api/consultations/{c.id}/statements/{sid}/versions/1")
    assert good.status == 200


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_version_numbers_are_ascii_digits_in_range_or_404(text):
    try:
        number = version_number(text)
    except ApiError as exc:
        assert exc.status == 404
        return
    assert text.isascii() and text.isdigit() and 1 <= number <= MAX_VERSION and number == int(text)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-2**70, max_value=2**70))
def test_version_numbers_from_integers(number):
    try:
        assert version_number(str(number)) == number and 1 <= number <= MAX_VERSION
    except ApiError as exc:
        assert exc.status == 404 and not 1 <= number <= MAX_VERSION


@pytest.mark.parametrize("where", ["create", "save", "change", "typed_name", "identification", "sign_field"])
async def test_lone_surrogates_are_422_and_change_nothing(link, server, where):
    c, sid = await sent(link)
    before = await snapshot(server, sid)
    bad = "\ud800"
    raw = {  # JSON texts: a lone surrogate can only come as an escape
        "create": ("post", f"/api/consultations/{c.id}/statements", {**DRAFT, "text": "X"}, "text"),
        "save": ("put", f"/api/consultations/{c.id}/statements/{sid}", {**DRAFT, "rear": {"contact": "X"}},
                 "contact"),
        "change": ("phone", f"{c.path}/statements/{sid}/change", {"message": "X"}, "message"),
        "typed_name": ("phone", f"{c.path}/statements/{sid}/sign", signing_body(typed_name="X"), "typed_name"),
        "identification": ("post", f"/api/consultations/{c.id}/statements/{sid}/send", {"identification": "X"},
                           "identification"),
        "sign_field": ("phone", f"{c.path}/statements/{sid}/sign", signing_body(document_sha256="X"),
                       "document_sha256"),
    }[where]
    method, url, body, _ = raw
    import json

    text = json.dumps(body).replace('"X"', json.dumps(bad))  # ensure_ascii: "\ud800"
    headers = {"Content-Type": "application/json"}
    if method == "phone":
        response = await c.phone.post(url, data=text, headers=headers)
    else:
        call = c.officer.client.put if method == "put" else c.officer.client.post
        response = await call(url, data=text, headers={**headers, **c.officer.headers()})
    assert response.status == 422, await response.text()
    assert await snapshot(server, sid) == before


@pytest.mark.parametrize("where", ["change", "identification", "reason"])
async def test_nul_and_control_characters_in_free_text_are_422(link, server, where):
    """PostgreSQL cannot store NUL: it must be refused before any write, not fail in one."""
    c, sid = await sent(link)
    before = await snapshot(server, sid)
    if where == "change":
        response = await c.phone.post(f"{c.path}/statements/{sid}/change", json={"message": "22:45\u0000"})
    elif where == "identification":
        await put(c, sid, {**DRAFT, "text": DRAFT["text"] + " More."})
        before = await snapshot(server, sid)
        response = await c.officer.post(f"/api/consultations/{c.id}/statements/{sid}/send",
                                        {"identification": "licence\u0000"})
    else:
        assert (await sign(c, sid)).status == 200
        before = await snapshot(server, sid)
        response = await c.officer.get(f"/api/consultations/{c.id}/statements/{sid}/pdf?reason=court%00")
        # A query parameter: refused as malformed (400) before any handler.
        assert response.status == 400, await response.text()
        assert await snapshot(server, sid) == before
        return
    assert response.status == 422, await response.text()
    assert await snapshot(server, sid) == before


async def test_a_deeply_nested_signing_body_is_400(link, server):
    c, sid = await sent(link)
    deep = "[" * 30000 + "]" * 30000
    response = await c.phone.post(f"{c.path}/statements/{sid}/sign", data=deep,
                                  headers={"Content-Type": "application/json"})
    assert response.status == 400 and (await response.json())["error"]["code"] == "malformed_json"
    not_utf8 = await c.phone.post(f"{c.path}/statements/{sid}/sign", data=b'{"typed_name": "\xff"}',
                                  headers={"Content-Type": "application/json"})
    assert not_utf8.status == 400


async def raw_post(client: Any, path: str, body: bytes, extra: bytes) -> int:
    """POST with header bytes no HTTP client library would send (not UTF-8); the status."""
    import asyncio

    url = client.make_url(path)
    cookies = "; ".join(f"{m.key}={m.value}" for m in client.session.cookie_jar.filter_cookies(url).values())
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nCookie: {cookies}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
                 .encode() + extra + b"\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1])


async def test_an_undecodable_user_agent_is_kept_cleaned(link, server):
    import json

    c, sid = await sent(link)
    # aiohttp hands a header that is not UTF-8 to the handler as lone surrogates.
    status = await raw_post(c.phone, f"{c.path}/statements/{sid}/sign", json.dumps(signing_body()).encode(),
                            b"User-Agent: Mozilla/5.0 \xff\xfe\r\n")
    assert status == 200
    async with server.app[DB]() as db:
        signature = await db.get(StatementSignature, sid)
    assert signature.user_agent == "Mozilla/5.0 \ufffd\ufffd" == signature.record["user_agent"]


@pytest.mark.parametrize("body, field", [
    ({**DRAFT, "exhibits": [3]}, "exhibits[0]"),
    ({**DRAFT, "exhibits": [{"ref": ["JS/1"]}]}, "exhibits[0].ref"),
    ({**DRAFT, "exhibits": [{"ref": "JS/1", "upload_id": {"a": 1}}]}, "exhibits[0].upload_id"),
    ({**DRAFT, "exhibits": {"ref": "JS/1"}}, "exhibits"),
    ({**DRAFT, "rear": ["contact"]}, "rear"),
    ({**DRAFT, "rear": {"contact": {"a": 1}}}, "rear.contact"),
    ({**DRAFT, "witness": ["A"]}, "witness"),
    ({**DRAFT, "witness": {"name": "A", "over_18": False, "age": 10**30}}, "witness.age"),
    ({**DRAFT, "text": "x" * 60001}, "text"),
    ({**DRAFT, "read_to_witness": "someone"}, "read_to_witness"),
    ({**DRAFT, "read_to_witness": {"name": 5}}, "read_to_witness.name"),
    ({**DRAFT, "exhibits": [{"ref": "JS/1", "upload_id": "a\u0000b"}]}, "exhibits[0].upload_id"),
    ({**DRAFT, "exhibits": [{"ref": "JS/1", "upload_id": "x" * 5000}]}, "exhibits[0].upload_id"),
    ({**DRAFT, "exhibits": [{"upload_id": "00000000-0000-4000-8000-000000000000"}] * 500}, "exhibits"),
])
async def test_malformed_drafts_name_the_field(link, server, body, field):
    c = await link()
    response = await c.officer.post(f"/api/consultations/{c.id}/statements", body)
    assert response.status == 422, await response.text()
    assert field in (await response.json())["error"]["fields"]


@pytest.mark.parametrize("body", [[], "text", 5, None])
async def test_a_draft_that_is_not_an_object_is_400(link, server, body):
    c = await link()
    response = await c.officer.post(f"/api/consultations/{c.id}/statements", body)
    assert response.status == 400


@pytest.mark.parametrize("version", ["2", 2.5, True, [1], {"v": 1}])
async def test_send_with_a_bad_version_is_a_clear_error(link, server, version):
    c, sid, _ = await drafted(link)
    response = await c.officer.post(f"/api/consultations/{c.id}/statements/{sid}/send", {"version": version})
    assert response.status in (409, 422), await response.text()
    assert (await snapshot(server, sid))["status"] == "draft"


# -- signature images ------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, idat: bytes = b"", colour: int = 6) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (its data need not match)."""
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def png_chunks(raw: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at + 8 <= len(raw):
        length, kind = struct.unpack(">I4s", raw[at:at + 8])
        chunks.append((kind, raw[at + 8:at + 8 + length]))
        at += 12 + length
    return chunks


def data_url(raw: bytes) -> str:
    return PNG_PREFIX + base64.b64encode(raw).decode()


def refused(value: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        check_signature(value)
    assert caught.value.status == 422 and caught.value.extra.get("fields") == ["signature_png"]
    return caught.value


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if Pillow decodes any pixel data."""
    def load(self, *args, **kwargs):
        raise AssertionError(f"decoded a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.parametrize("width, height", [(20000, 20000), (4000, 4000), (4000, 1001), (2**31 - 1, 1), (0, 10)])
def test_a_png_declaring_a_huge_image_is_refused_before_decoding(no_decoding, width, height):
    assert refused(data_url(png_declaring(width, height))).code == "signature_too_large" or width == 0


def test_a_real_decompression_bomb_is_refused_without_decoding(no_decoding):
    # 4000 x 4000 RGBA of zeros: 64 MB of pixels in about 60 KB of PNG.
    row = b"\0" + b"\0" * (4000 * 4)
    bomb = png_declaring(4000, 4000, zlib.compress(row * 4000, 9))
    assert len(bomb) < MAX_SIGNATURE_BYTES
    assert refused(data_url(bomb)).code == "signature_too_large"


def test_a_good_signature_is_still_accepted():
    image = check_signature(signature_png())
    assert image.width > 0 and image.cropped.startswith(b"\x89PNG")


def _real_png() -> bytes:
    return base64.b64decode(signature_png(size=(120, 40))[len(PNG_PREFIX):])


REAL_PNG = _real_png()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_pngs_are_422_or_accepted_never_anything_else(data):
    raw = bytearray(REAL_PNG)
    how = data.draw(st.sampled_from(["truncate", "flip", "splice", "header", "chunk", "ihdr"]))
    if how == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] = data.draw(st.integers(0, 255))
    elif how == "splice":
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(max_size=64))
    elif how == "header":  # a header declaring other dimensions over the same data
        raw[16:24] = struct.pack(">II", data.draw(st.integers(0, 2**32 - 1)), data.draw(st.integers(0, 2**32 - 1)))
    elif how == "chunk":  # a chunk's data changed, its CRC made right: Pillow reads on
        chunks = png_chunks(REAL_PNG)
        at = data.draw(st.integers(0, len(chunks) - 1))
        kind, body = chunks[at]
        if kind == b"IDAT" and data.draw(st.booleans()):
            body = zlib.compress(data.draw(st.binary(max_size=2000)))
        else:
            body = bytearray(body)
            for _ in range(data.draw(st.integers(1, 4))):
                if body:
                    body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
        chunks[at] = (kind, bytes(body))
        raw = bytearray(b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(k, b) for k, b in chunks))
    else:  # any header fields (depth, colour type, interlace...) with a right CRC
        width, height = data.draw(st.integers(0, 300)), data.draw(st.integers(0, 300))
        fields = [data.draw(st.sampled_from([1, 2, 4, 8, 16, 0, 3, 255])) for _ in range(2)]
        fields += [data.draw(st.integers(0, 2)) for _ in range(3)]
        idat = zlib.compress(data.draw(st.binary(max_size=4000)))
        raw = bytearray(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, *fields))
                        + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    try:
        image = check_signature(data_url(bytes(raw)))
    except ApiError as exc:
        assert exc.status == 422
    else:
        assert image.width <= 4000 and image.height <= 4000


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=200),
    st.text(max_size=200).map(lambda t: PNG_PREFIX + t),
    st.binary(max_size=300).map(data_url),
    st.binary(max_size=300).map(lambda b: data_url(b"\x89PNG\r\n\x1a\n" + b)),
    st.none(), st.integers(), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.none()),
))
def test_random_signature_values_are_422(value):
    error = refused(value)
    assert error.code in ("invalid_signature", "empty_signature", "signature_too_large")


def test_oversized_data_urls_are_refused_before_decoding(monkeypatch):
    def no_b64(*args, **kwargs):
        raise AssertionError("decoded base64 past the limit")

    monkeypatch.setattr(base64, "b64decode", no_b64)
    assert refused(PNG_PREFIX + "A" * (MAX_SIGNATURE_BYTES * 2)).code == "signature_too_large"


def test_pillow_reads_only_pngs():
    gif = io.BytesIO()
    Image.new("RGB", (50, 50), "black").save(gif, "GIF")
    assert refused(data_url(gif.getvalue())).code == "invalid_signature"
