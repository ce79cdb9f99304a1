"""Evidence uploads over tus 1.0, driven by the independent tuspy client against the
real server: resumable, hashed, typed from content, encrypted at rest, audit-logged."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
from pathlib import Path
from typing import Any, Optional

import av
import pytest
from conftest import eventually
from PIL import ExifTags, Image
from sqlalchemy import select
from tusclient.client import TusClient
from tusclient.uploader import Uploader
from yarl import URL

from evr.db import AuditEntry, EvidenceItem, Upload
from evr.http import DB, UPLOADS
from evr.uploads import api as uploads_api

TUS = {"Tus-Resumable": "1.0.0"}


class Sha256Uploader(Uploader):
    """tuspy sends sha1 checksums by default; the server takes sha256 too."""

    CHECKSUM_ALGORITHM_PAIR = ("sha256", hashlib.sha256)


def jpeg_with_exif() -> bytes:
    image = Image.new("RGB", (1200, 800), (40, 90, 160))
    exif = Image.Exif()
    exif[ExifTags.Base.Model] = "Pixel 7"
    exif[ExifTags.Base.DateTime] = "2026:11:20 21:14:03"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (50.0, 43.0, 12.5)}
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=90)
    return out.getvalue()


def small_video() -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_image(Image.new("RGB", (160, 120), (200, 20 * i, 30)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def victim_headers(link: Any) -> dict[str, str]:
    cookies = link.phone.session.cookie_jar.filter_cookies(link.phone.make_url(link.path))
    return {"Cookie": f"evr_link={cookies['evr_link'].value}"}


def staff_headers(officer: Any) -> dict[str, str]:
    cookies = officer.client.session.cookie_jar.filter_cookies(officer.client.make_url("/api/"))
    return {"Cookie": "; ".join(f"{k}={v.value}" for k, v in cookies.items()), "X-CSRF-Token": officer.csrf}


async def tus_send(url: str, headers: dict[str, str], data: bytes, *, name: str = "file.bin",
                   filetype: str = "application/octet-stream", chunk_size: int = 4 * 1024 * 1024,
                   stop_at: Optional[int] = None, upload_url: Optional[str] = None, checksum: bool = True) -> str:
    """Upload with tuspy (blocking, so in a thread); returns the upload's URL."""

    def run() -> str:
        client = TusClient(url, headers=headers)
        uploader = Sha256Uploader(file_stream=io.BytesIO(data), client=client, chunk_size=chunk_size,
                                  metadata={"filename": name, "filetype": filetype}, upload_checksum=checksum,
                                  url=upload_url)
        uploader.upload(stop_at=stop_at)
        return uploader.url

    return await asyncio.to_thread(run)


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


async def audit_actions(server: Any, object_: str) -> list[tuple[str, str]]:
    async with server.app[DB]() as db:
        rows = await db.scalars(select(AuditEntry).where(AuditEntry.object == object_).order_by(AuditEntry.id))
        return [(r.action, r.actor) for r in rows]


async def test_a_victim_upload_pauses_resumes_and_arrives_intact(link, server):
    call = await link()
    photo = jpeg_with_exif()
    base = str(call.phone.make_url(call.path + "/uploads"))
    headers = victim_headers(call)
    # Send the first part in small chunks, then stop (the victim pressed pause)...
    url = await tus_send(base, headers, photo, name="IMG_2041.jpg", filetype="image/jpeg",
                         chunk_size=16 * 1024, stop_at=len(photo) // 2)
    uid = upload_id(url)
    head = await call.phone.head(f"{call.path}/uploads/{uid}", headers=TUS)
    assert int(head.headers["Upload-Offset"]) >= len(photo) // 2
    assert head.headers["Upload-Length"] == str(len(photo)) and head.headers["Tus-Resumable"] == "1.0.0"
    server.app[UPLOADS]._hashes.clear()  # as after a restart: the running hash is rebuilt from what is staged
    # ...and resume on the same upload URL: tuspy asks the offset with HEAD and goes on.
    await tus_send(base, headers, photo, name="IMG_2041.jpg", upload_url=url)
    digest = hashlib.sha256(photo).hexdigest()

    receipt = await (await call.phone.get(f"{call.path}/uploads/{uid}")).json()
    assert receipt["sha256"] == digest and receipt["size"] == len(photo) and receipt["status"] == "complete"
    assert receipt["filename"] == "IMG_2041.jpg" and receipt["exhibit_ref"] == "EVR/1"

    listed = await (await call.officer.get(f"/api/consultations/{call.id}/uploads")).json()
    (item,) = listed["uploads"]
    assert {"id", "filename", "size", "sha256", "content_type", "exhibit_ref", "uploaded_by", "created_at",
            "status"} <= set(item)
    assert (item["id"], item["content_type"], item["uploaded_by"], item["sha256"]) == (uid, "image/jpeg", "victim", digest)
    assert item["metadata"]["exif"]["Model"] == "Pixel 7"
    assert item["metadata"]["exif"]["GPSLatitudeRef"] == "N" and item["metadata"]["width"] == 1200

    preview = await call.officer.get(f"/api/consultations/{call.id}/uploads/{uid}/preview")
    assert preview.status == 200 and preview.content_type == "image/jpeg"
    assert max(Image.open(io.BytesIO(await preview.read())).size) <= 320

    content = await call.officer.get(f"/api/consultations/{call.id}/uploads/{uid}/content")
    assert content.status == 200 and await content.read() == photo
    assert content.headers["Content-Disposition"].startswith('attachment; filename="IMG_2041.jpg"')
    assert content.headers["X-Content-Type-Options"] == "nosniff"

    assert await audit_actions(server, f"upload:{uid}") == [
        ("upload.start", "victim"), ("upload.collect", "victim"), ("upload.view", "alice"), ("upload.download", "alice")]
    async with server.app[DB]() as db:
        evidence = await db.get(EvidenceItem, uid)
    assert (evidence.kind, evidence.sha256, evidence.size) == ("upload", digest, len(photo))
    assert evidence.prefix == f"uploads/{call.id}/{uid}/"
    # At rest: no clear bytes in the store and nothing left in staging.
    stored = list(Path(server.app[UPLOADS].settings.data_dir, "evidence", "uploads").rglob("original"))
    assert len(stored) == 1 and photo[1000:1100] not in stored[0].read_bytes()
    assert list(server.app[UPLOADS].staging.iterdir()) == []


async def test_staff_upload_of_a_video_gets_its_first_frame_as_preview(link, server):
    call = await link()
    video = small_video()
    url = await tus_send(str(call.officer.client.make_url(f"/api/consultations/{call.id}/uploads")),
                         staff_headers(call.officer), video, name="doorbell.webm", filetype="video/webm")
    item = await (await call.officer.get(f"/api/consultations/{call.id}/uploads/{upload_id(url)}")).json()
    assert item["status"] == "complete" and item["content_type"] == "video/webm" and item["uploaded_by"] == "alice"
    assert item["metadata"]["streams"][0]["codec"] == "vp8" and item["exhibit_ref"] == "A/1"
    preview = await call.officer.get(f"/api/consultations/{call.id}/uploads/{item['id']}/preview")
    frame = Image.open(io.BytesIO(await preview.read()))
    assert frame.size == (160, 120) and frame.getpixel((80, 60))[0] > 150  # the red first frame


async def test_active_content_is_quarantined_and_never_served_inline(link, server):
    call = await link()
    headers = victim_headers(call)
    base = str(call.phone.make_url(call.path + "/uploads"))
    svg = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(document.cookie)</script></svg>"
    html = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
    svg_url = await tus_send(base, headers, svg, name="holiday.jpg", filetype="image/jpeg")
    html_url = await tus_send(base, headers, html, name="../../etc/pass\x00wd.html", filetype="text/html")
    listed = {u["id"]: u for u in (await (await call.officer.get(f"/api/consultations/{call.id}/uploads")).json())["uploads"]}
    for url, detected in ((svg_url, "image/svg+xml"), (html_url, "text/html")):
        item = listed[upload_id(url)]
        assert item["status"] == "quarantined" and item["quarantined"] and item["content_type"] == detected
        assert item["quarantine_reason"] and not item["preview"]
        assert (await call.officer.get(f"/api/consultations/{call.id}/uploads/{item['id']}/preview")).status == 404
        content = await call.officer.get(f"/api/consultations/{call.id}/uploads/{item['id']}/content")
        assert content.content_type == "application/octet-stream"
        assert content.headers["Content-Disposition"].startswith("attachment;")
        assert content.headers["X-Content-Type-Options"] == "nosniff" and "sandbox" in content.headers["Content-Security-Policy"]
    html_item = listed[upload_id(html_url)]
    assert html_item["filename"] == "pass_wd.html" and html_item["original_name"] == "../../etc/pass\ufffdwd.html"


async def test_bad_requests_are_refused_and_lose_nothing(link, server):
    call = await link()
    phone, path = call.phone, call.path + "/uploads"
    over = await phone.post(path, headers={**TUS, "Upload-Length": str(20 * 1024**3 + 1)})
    assert over.status == 413 and (await over.json())["error"]["code"] == "too_large"
    assert (await phone.post(path, headers={"Upload-Length": "10"})).status == 412  # no Tus-Resumable
    bad_meta = await phone.post(path, headers={**TUS, "Upload-Length": "10", "Upload-Metadata": "filename %%%"})
    assert bad_meta.status == 400
    created = await phone.post(path, headers={**TUS, "Upload-Length": "8"})
    assert created.status == 201
    url = created.headers["Location"]
    assert url.startswith(path + "/")
    patch = {**TUS, "Content-Type": "application/offset+octet-stream"}

    async def send(offset: int, body: bytes, **extra: str) -> Any:
        return await phone.patch(url, data=body, headers={**patch, "Upload-Offset": str(offset), **extra})

    assert (await send(0, b"abcd")).headers["Upload-Offset"] == "4"
    wrong = await send(2, b"zz")
    assert wrong.status == 409 and (await wrong.json())["error"]["code"] == "wrong_offset"
    bad_sum = await send(4, b"efgh", **{"Upload-Checksum": "sha256 " + base64.b64encode(hashlib.sha256(b"nope").digest()).decode()})
    assert bad_sum.status == 460 and (await bad_sum.json())["error"]["code"] == "checksum_mismatch"
    too_long = await send(4, b"efghijkl")
    assert too_long.status == 413
    assert (await phone.patch(url, data=b"ef", headers={**TUS, "Upload-Offset": "4"})).status == 415
    assert (await phone.head(url, headers=TUS)).headers["Upload-Offset"] == "4"  # nothing of the refused bodies kept
    good = await send(4, b"efgh", **{"Upload-Checksum": "sha256 " + base64.b64encode(hashlib.sha256(b"efgh").digest()).decode()})
    assert good.status == 204 and good.headers["Upload-Offset"] == "8"
    receipt = await (await phone.get(url)).json()
    assert receipt["sha256"] == hashlib.sha256(b"abcdefgh").hexdigest()
    assert (await phone.delete(url, headers=TUS)).status == 403  # finished: evidence, kept
    # Termination of an unfinished upload.
    other = (await phone.post(path, headers={**TUS, "Upload-Length": "100"})).headers["Location"]
    await phone.patch(other, data=b"x" * 10, headers={**patch, "Upload-Offset": "0"})
    assert (await phone.delete(other, headers=TUS)).status == 204
    assert (await phone.head(other, headers=TUS)).status == 410
    assert await audit_actions(server, f"upload:{upload_id(other)}") == [("upload.start", "victim"),
                                                                         ("upload.terminate", "victim")]


async def test_an_empty_file_is_refused_as_an_exhibit(link, server):
    """An empty file is no evidence: refused before anything is made (it used to be
    ingested at creation, and 200 empty exhibits took 2.6 s)."""
    call = await link()
    for client, path, headers in ((call.phone, call.path + "/uploads", TUS),
                                  (call.officer.client, f"/api/consultations/{call.id}/uploads",
                                   {**TUS, **call.officer.headers()})):
        refused = await client.post(path, headers={**headers, "Upload-Length": "0"})
        assert refused.status == 422 and (await refused.json())["error"]["code"] == "empty_file"
    async with server.app[DB]() as db:
        assert list(await db.scalars(select(Upload))) == []
    staging = server.app[UPLOADS].staging
    assert not staging.exists() or list(staging.iterdir()) == []


async def test_a_broken_connection_keeps_what_arrived(link, server, monkeypatch):
    monkeypatch.setattr(uploads_api, "IDLE_TIMEOUT", 1.0)
    call = await link()
    data = os.urandom(3 * 1024 * 1024)
    created = await call.phone.post(call.path + "/uploads", headers={**TUS, "Upload-Length": str(len(data))})
    url = created.headers["Location"]
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = (f"PATCH {url} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            f"Content-Length: {len(data)}\r\n{victim_headers(call) and 'Cookie: ' + victim_headers(call)['Cookie']}\r\n\r\n")
    writer.write(head.encode() + data[: 1536 * 1024])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.transport.abort()  # the phone lost its signal
    async def kept() -> int:
        return int((await call.phone.head(url, headers=TUS)).headers["Upload-Offset"])

    offset = await eventually(kept, timeout=5, interval=0.1, what="an offset kept from the dropped PATCH")
    assert offset == 1536 * 1024
    await tus_send(str(call.phone.make_url(call.path + "/uploads")), victim_headers(call), data, upload_url=str(call.phone.make_url(url)))
    receipt = await (await call.phone.get(url)).json()
    assert receipt["sha256"] == hashlib.sha256(data).hexdigest()


async def test_a_closed_link_refuses_uploads_keeps_finished_ones_and_purges_partial_ones_later(link, server, clock):
    call = await link()
    base = str(call.phone.make_url(call.path + "/uploads"))
    headers = victim_headers(call)
    done = upload_id(await tus_send(base, headers, b"%PDF-1.4\n" + os.urandom(5000), name="report.pdf"))
    partial = await tus_send(base, headers, os.urandom(400_000), chunk_size=100_000, stop_at=100_000)
    assert (await call.officer.post(f"/api/consultations/{call.id}/close")).status == 200
    assert (await call.phone.head(URL(partial).path, headers=TUS)).status == 410
    for response in (await call.phone.post(call.path + "/uploads", headers={**TUS, "Upload-Length": "5"}),
                     await call.phone.patch(URL(partial).path, data=b"x", headers={
                         **TUS, "Upload-Offset": "100000", "Content-Type": "application/offset+octet-stream"}),
                     await call.phone.get(call.path + "/uploads")):
        assert response.status == 410 and (await response.json())["error"]["code"] == "link_closed"
    assert (await call.officer.get(f"/api/consultations/{call.id}/uploads/{done}/content")).status == 200
    uploads = server.app[UPLOADS]
    assert await uploads.purge_stale() == 0  # not yet
    clock.advance(days=7, minutes=1)
    assert await uploads.purge_stale() == 1
    async with server.app[DB]() as db:
        assert (await db.get(Upload, done)).status == "complete"
        assert (await db.get(Upload, upload_id(partial))).status == "purged"
    assert await uploads.store.exists(f"uploads/{call.id}/{done}/original")
    assert list(uploads.staging.iterdir()) == []
    assert await audit_actions(server, f"upload:{upload_id(partial)}") == [("upload.start", "victim"),
                                                                           ("upload.purge", "system")]


async def test_who_may_upload_and_see(link, server, staff, new_client):
    call = await link()
    stranger = await new_client()  # a second browser with the link
    refused = await stranger.post(call.path + "/uploads", headers={**TUS, "Upload-Length": "5"})
    assert refused.status == 403 and (await refused.json())["error"]["code"] == "link_in_use"
    no_csrf = await call.officer.client.post(f"/api/consultations/{call.id}/uploads", headers={**TUS, "Upload-Length": "5"})
    assert no_csrf.status == 403
    staff_url = await tus_send(str(call.officer.client.make_url(f"/api/consultations/{call.id}/uploads")),
                               staff_headers(call.officer), b"officer's note", name="note.txt")
    # The victim does not see staff uploads; another officer does not see this consultation.
    assert (await call.phone.get(f"{call.path}/uploads/{upload_id(staff_url)}")).status == 404
    assert (await (await call.phone.get(call.path + "/uploads")).json()) == {"uploads": []}
    bob = await staff("bob")
    assert (await bob.get(f"/api/consultations/{call.id}/uploads")).status == 404
    assert (await bob.get(f"/api/consultations/{call.id}/uploads/{upload_id(staff_url)}/content")).status == 404


async def test_the_officer_edits_the_exhibit_reference(link, server):
    call = await link()
    uid = upload_id(await tus_send(str(call.phone.make_url(call.path + "/uploads")), victim_headers(call),
                                   jpeg_with_exif(), name="a.jpg"))
    path = f"/api/consultations/{call.id}/uploads/{uid}"
    bad = await call.officer.client.patch(path, json={"exhibit_ref": "../<script>"}, headers=call.officer.headers())
    assert bad.status == 422
    changed = await call.officer.client.patch(path, json={"exhibit_ref": "JS/1"}, headers=call.officer.headers())
    assert changed.status == 200 and (await changed.json())["exhibit_ref"] == "JS/1"
    assert (await (await call.phone.get(f"{call.path}/uploads/{uid}")).json())["exhibit_ref"] == "JS/1"
    assert ("upload.exhibit_ref", "alice") in await audit_actions(server, f"upload:{uid}")


@pytest.fixture
def on_s3(settings, s3_settings):
    for name, value in s3_settings.items():
        setattr(settings, name, value)
    return settings


async def test_uploads_are_stored_on_s3_when_configured(on_s3, link, server, s3_server):
    call = await link()
    data = os.urandom(20 * 1024 * 1024 + 3)  # more than one multipart part
    uid = upload_id(await tus_send(str(call.phone.make_url(call.path + "/uploads")), victim_headers(call), data,
                                   name="cctv.zip", chunk_size=8 * 1024 * 1024))
    store = server.app[UPLOADS].store
    key = f"uploads/{call.id}/{uid}/original"
    assert await store.keys(f"uploads/{call.id}/{uid}/") == [key]
    at_rest = store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
    assert data[:4096] not in at_rest
    content = await call.officer.get(f"/api/consultations/{call.id}/uploads/{uid}/content")
    assert hashlib.sha256(await content.read()).hexdigest() == hashlib.sha256(data).hexdigest()
