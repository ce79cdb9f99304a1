"""Hostile and careless input to the uploads API (issue 11, findings 3, 11, 15, 16):
tus headers, metadata and paths give a JSON 4xx (never a 500, never an HTML page
under /j/), uploaders are told apart by role and id, file names shown to staff lose
bidi controls, and every change commits with its audit entry or not at all."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from test_uploads import TUS, audit_actions, jpeg_with_exif, staff_headers, tus_send, upload_id, victim_headers

from evr.db import AuditEntry, EvidenceItem, Upload, User
from evr.errors import ApiError
from evr.http import DB, UPLOADS
from evr.uploads import api, content
from evr.uploads.service import decode_metadata

PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}
BAD_COUNTS = ["²", "٣", "-1", "+5", "1e3", "5 5", "0x10", "1_000", "", "9" * 25, "99999999999999999999"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def json_error(response: Any) -> tuple[int, str]:
    assert response.content_type == "application/json", await response.text()
    return response.status, (await response.json())["error"]["code"]


async def raw_request(server: Any, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request as bytes (headers that are not valid UTF-8); the status and body."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(head.encode("utf-8", "surrogateescape") + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("value", BAD_COUNTS)
async def test_upload_length_and_offset_take_only_ascii_digits(link, server, value):
    call = await link()
    path = call.path + "/uploads"
    created = await call.phone.post(path, headers={**TUS, "Upload-Length": value})
    assert await json_error(created) == (400, "bad_upload_length")
    url = (await call.phone.post(path, headers={**TUS, "Upload-Length": "10"})).headers["Location"]
    patched = await call.phone.patch(url, data=b"abc", headers={**PATCH, "Upload-Offset": value})
    assert await json_error(patched) == (400, "bad_upload_offset")
    assert (await call.phone.head(url, headers=TUS)).headers["Upload-Offset"] == "0"


async def test_undecodable_header_bytes_give_a_json_400(link, server):
    call = await link()
    cookie = victim_headers(call)["Cookie"]
    for header in ("Upload-Length: 1\udcff0", "Upload-Length: 10\r\nUpload-Metadata: filename \udcff\udcfe",
                   "Upload-Length: 10\r\nUpload-Metadata: \udcff " + b64("x")):
        status, body = await raw_request(server, (
            f"POST {call.path}/uploads HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nCookie: {cookie}\r\n"
            f"{header}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
        assert status == 400 and b'"error"' in body, body


@pytest.mark.parametrize("metadata", [
    "filename %%%",  # not base64
    "filename " + base64.b64encode(b"\xff\xfe\xed\xa0\x80").decode(),  # not UTF-8 (a surrogate's encoding too)
    "filename " + b64("a") + "=",  # bad padding
    "filename " + "é",  # not ASCII
])
async def test_bad_upload_metadata_gives_400(link, server, metadata):
    call = await link()
    created = await call.phone.post(call.path + "/uploads",
                                    headers={**TUS, "Upload-Length": "10", "Upload-Metadata": metadata})
    assert await json_error(created) == (400, "bad_metadata")


@given(st.text())
def test_metadata_is_decoded_or_refused_with_a_400(header):
    try:
        found = decode_metadata(header)
    except ApiError as exc:
        assert exc.status == 400
        return
    for value in found.values():
        value.encode("utf-8")  # storable
        assert "\x00" not in value


@given(st.text())
def test_counts_in_headers_are_ascii_digits_or_a_400(value):
    class Request:
        headers = {"Upload-Length": value}

    try:
        number = api._int_header(Request(), "Upload-Length")  # type: ignore[arg-type]
    except ApiError as exc:
        assert exc.status == 400 and exc.code == "bad_upload_length"
        return
    assert value.isascii() and value.isdigit() and number == int(value)


async def test_everything_under_the_link_answers_json(link, server):
    call = await link()
    base = call.path + "/uploads"
    uid = upload_id(await tus_send(str(call.phone.make_url(base)), victim_headers(call), b"%PDF-1.4\n", name="a.pdf"))
    assert await json_error(await call.phone.put(base)) == (405, "method_not_allowed")
    assert await json_error(await call.phone.post(f"{base}/{uid}")) == (405, "method_not_allowed")
    assert await json_error(await call.phone.get(f"{base}/{uid}/anything")) == (404, "not_found")
    for bad in ("not-an-id", "%00", "%ED%A0%80", "x" * 300, uid.upper()):
        assert await json_error(await call.phone.get(f"{base}/{bad}")) == (404, "not_found")
        head = await call.phone.head(f"{base}/{bad}", headers=TUS)  # no body, but said as JSON
        assert (head.status, head.content_type) == (404, "application/json")
        staff = await call.officer.get(f"/api/consultations/{call.id}/uploads/{bad}")
        assert await json_error(staff) == (404, "not_found")


async def test_file_names_shown_to_staff_lose_bidi_controls(link, server):
    assert content.sanitise_filename("invoice\u202egpj.exe") == "invoicegpj.exe"
    assert content.sanitise_filename("\u2066a\u2067b\u2068c\u2069\u202a\u202b\u202c\u202d.jpg") == "abc.jpg"
    call = await link()
    sent = "holiday\u202egnp.exe"
    uid = upload_id(await tus_send(str(call.phone.make_url(call.path + "/uploads")), victim_headers(call),
                                   b"MZ\x90\x00", name=sent))
    item = await (await call.officer.get(f"/api/consultations/{call.id}/uploads/{uid}")).json()
    assert item["filename"] == "holidaygnp.exe" and item["original_name"] == sent  # as sent, kept
    download = await call.officer.get(f"/api/consultations/{call.id}/uploads/{uid}/content")
    assert "%E2%80%AE" not in download.headers["Content-Disposition"]


async def test_uploaders_are_told_apart_by_role_and_id_not_by_name(link, server):
    call = await link()
    staff_url = await tus_send(str(call.officer.client.make_url(f"/api/consultations/{call.id}/uploads")),
                               staff_headers(call.officer), b"%PDF-1.4\n", name="note.pdf")
    async with server.app[DB]() as db:
        alice = await db.scalar(select(User).where(User.username == "alice"))
        # A member of staff whose display name is "victim" (an account made before the
        # name was reserved, or a name copied into the row): still staff.
        now = datetime.now(timezone.utc)
        db.add(Upload(id="00000000-0000-4000-8000-00000000beef", consultation_id=call.id, status="complete",
                      uploaded_by="victim", uploader_role="officer", uploader_id=alice.id, original_name="x.pdf",
                      filename="x.pdf", length=1, offset=1, sha256="00" * 32, created_at=now, updated_at=now))
        await db.commit()
    item = await (await call.officer.get(f"/api/consultations/{call.id}/uploads/{upload_id(staff_url)}")).json()
    assert (item["uploaded_by"], item["uploader_role"], item["uploader_id"]) == ("alice", "officer", alice.id)
    victim_url = await tus_send(str(call.phone.make_url(call.path + "/uploads")), victim_headers(call),
                                jpeg_with_exif(), name="a.jpg")
    item = await (await call.officer.get(f"/api/consultations/{call.id}/uploads/{upload_id(victim_url)}")).json()
    assert (item["uploaded_by"], item["uploader_role"], item["uploader_id"]) == ("victim", "victim", None)
    listed = await (await call.phone.get(call.path + "/uploads")).json()
    assert [u["id"] for u in listed["uploads"]] == [upload_id(victim_url)]
    refused = await call.phone.get(f"{call.path}/uploads/00000000-0000-4000-8000-00000000beef")
    assert refused.status == 404


# -- every change with its audit entry (audit_fails: the entry's write fails) ----------


async def upload_row(server: Any, uid: str) -> Upload:
    async with server.app[DB]() as db:
        row = await db.get(Upload, uid)
        assert row is not None
        return row


async def test_a_refused_audit_entry_undoes_the_start(link, server, audit_fails):
    call = await link()
    audit_fails()
    failed = await call.phone.post(call.path + "/uploads", headers={**TUS, "Upload-Length": "10"})
    assert await json_error(failed) == (500, "internal_error")
    async with server.app[DB]() as db:
        assert list(await db.scalars(select(Upload))) == []
    assert list(server.app[UPLOADS].staging.iterdir()) == []


async def test_a_refused_audit_entry_undoes_the_collection(link, server, audit_fails):
    call = await link()
    url = (await call.phone.post(call.path + "/uploads", headers={**TUS, "Upload-Length": "9"})).headers["Location"]
    audit_fails()
    last = await call.phone.patch(url, data=b"%PDF-1.4\n", headers={**PATCH, "Upload-Offset": "0"})
    assert await json_error(last) == (500, "internal_error")
    row = await upload_row(server, url.rsplit("/", 1)[1])
    # The bytes are kept (staged, and sealed in the store): the next start finishes it.
    assert (row.status, row.offset, row.exhibit_ref, row.completed_at) == ("uploading", 9, None, None)
    async with server.app[DB]() as db:
        assert await db.get(EvidenceItem, row.id) is None
        actions = [e.action for e in await db.scalars(select(AuditEntry).where(AuditEntry.object == f"upload:{row.id}"))]
    assert actions == ["upload.start"]
    assert server.app[UPLOADS].staged(row.id).exists()


async def test_a_refused_audit_entry_undoes_the_exhibit_reference(link, server, audit_fails):
    call = await link()
    uid = upload_id(await tus_send(str(call.phone.make_url(call.path + "/uploads")), victim_headers(call),
                                   b"%PDF-1.4\n", name="a.pdf"))
    path = f"/api/consultations/{call.id}/uploads/{uid}"
    audit_fails()
    failed = await call.officer.client.patch(path, json={"exhibit_ref": "JS/9"}, headers=call.officer.headers())
    assert failed.status == 500
    assert (await upload_row(server, uid)).exhibit_ref == "EVR/1"


async def test_an_exhibit_reference_that_cannot_be_stored_is_refused(link, server):
    call = await link()
    uid = upload_id(await tus_send(str(call.phone.make_url(call.path + "/uploads")), victim_headers(call),
                                   b"%PDF-1.4\n", name="a.pdf"))
    path = f"/api/consultations/{call.id}/uploads/{uid}"
    for body in ('{"exhibit_ref": "\\ud800"}', '{"exhibit_ref": "JS/1\\ud800"}'):
        refused = await call.officer.client.patch(path, data=body, headers={
            **call.officer.headers(), "Content-Type": "application/json"})
        assert refused.status == 422
    assert (await upload_row(server, uid)).exhibit_ref == "EVR/1"
    assert ("upload.exhibit_ref", "alice") not in await audit_actions(server, f"upload:{uid}")


async def test_a_refused_audit_entry_undoes_the_termination(link, server, audit_fails):
    call = await link()
    url = (await call.phone.post(call.path + "/uploads", headers={**TUS, "Upload-Length": "100"})).headers["Location"]
    await call.phone.patch(url, data=b"x" * 10, headers={**PATCH, "Upload-Offset": "0"})
    audit_fails()
    assert await json_error(await call.phone.delete(url, headers=TUS)) == (500, "internal_error")
    uid = url.rsplit("/", 1)[1]
    assert (await upload_row(server, uid)).status == "uploading"
    assert server.app[UPLOADS].staged(uid).exists()


async def test_a_refused_audit_entry_undoes_the_purge(link, server, clock, audit_fails):
    call = await link()
    url = (await call.phone.post(call.path + "/uploads", headers={**TUS, "Upload-Length": "100"})).headers["Location"]
    clock.advance(days=8)
    audit_fails()
    with pytest.raises(Exception, match="audit write failed"):
        await server.app[UPLOADS].purge_stale()
    uid = url.rsplit("/", 1)[1]
    assert (await upload_row(server, uid)).status == "uploading"
    assert server.app[UPLOADS].staged(uid).exists()
