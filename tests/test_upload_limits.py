"""Upload quotas (finding 10 of issue 11): per link and per consultation, on files
and on declared bytes, refused before any byte; the staging disk's free space less
what unfinished uploads may still send; creations at once cannot pass a limit."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from sqlalchemy import func, select
from test_uploads import TUS, tus_send, upload_id, victim_headers

from evr.db import Upload
from evr.http import DB
from evr.uploads import service


def victim_post(call: Any, length: int) -> Any:
    return call.phone.post(call.path + "/uploads", headers={**TUS, "Upload-Length": str(length)})


def staff_post(call: Any, length: int) -> Any:
    return call.officer.client.post(f"/api/consultations/{call.id}/uploads",
                                    headers={**TUS, **call.officer.headers(), "Upload-Length": str(length)})


async def refusal(response: Any) -> tuple[int, str, Any]:
    error = (await response.json())["error"]
    return response.status, error["code"], error.get("scope")


async def count_uploads(server: Any) -> int:
    async with server.app[DB]() as db:
        return await db.scalar(select(func.count()).select_from(Upload))


async def test_the_link_has_a_quota_of_files_and_cancelled_uploads_count(link, server, settings):
    settings.upload_link_max_files = 3
    call = await link()
    first = (await victim_post(call, 10)).headers["Location"]
    assert (await call.phone.delete(first, headers=TUS)).status == 204  # cancelled: still one started
    for _ in range(2):
        assert (await victim_post(call, 10)).status == 201
    assert await refusal(await victim_post(call, 10)) == (413, "upload_quota_files", "link")
    assert (await staff_post(call, 10)).status == 201  # the link's quota is the victim's
    assert await count_uploads(server) == 4


async def test_the_link_has_a_quota_of_declared_bytes(link, server, settings):
    settings.upload_link_max_bytes = 1000
    call = await link()
    first = (await victim_post(call, 600)).headers["Location"]  # nothing sent yet: declared bytes count
    assert await refusal(await victim_post(call, 401)) == (413, "upload_quota_bytes", "link")
    assert (await victim_post(call, 400)).status == 201
    assert (await call.phone.delete(first, headers=TUS)).status == 204  # a cancelled upload frees its bytes
    assert (await victim_post(call, 600)).status == 201


async def test_the_consultation_has_quotas_for_victim_and_staff_together(link, server, settings):
    settings.upload_consultation_max_files = 2
    settings.upload_consultation_max_bytes = 10_000
    call = await link()
    assert (await victim_post(call, 10)).status == 201
    assert await refusal(await staff_post(call, 10_000)) == (413, "upload_quota_bytes", "consultation")
    assert (await staff_post(call, 10)).status == 201
    assert await refusal(await staff_post(call, 10)) == (413, "upload_quota_files", "consultation")
    assert await refusal(await victim_post(call, 10)) == (413, "upload_quota_files", "consultation")


async def test_creations_at_once_do_not_pass_the_quota(link, server, settings):
    settings.upload_link_max_files = 5
    call = await link()
    answers = await asyncio.gather(*(victim_post(call, 100) for _ in range(20)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [201] * 5 + [413] * 15
    assert await count_uploads(server) == 5


async def test_declared_lengths_are_reserved_against_the_staging_disk(link, server, monkeypatch):
    call = await link()
    free = service.DISK_MARGIN + 1000
    monkeypatch.setattr(service.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - free, free))
    partial = (await victim_post(call, 600)).headers["Location"]
    # 600 bytes are spoken for, even before they arrive: 401 more do not fit.
    refused = await victim_post(call, 401)
    assert await refusal(refused) == (507, "insufficient_storage", None)
    assert (await call.phone.patch(partial, data=b"x" * 200, headers={
        **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})).status == 204
    # What arrived is on the disk (its free space says so); only the 400 to come are held.
    assert (await victim_post(call, 600)).status == 201
    assert await refusal(await victim_post(call, 1)) == (507, "insufficient_storage", None)
    assert await count_uploads(server) == 2


async def test_a_finished_upload_no_longer_reserves_staging_space(link, server, monkeypatch):
    call = await link()
    free = service.DISK_MARGIN + 1000
    monkeypatch.setattr(service.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - free, free))
    uid = upload_id(await tus_send(str(call.phone.make_url(call.path + "/uploads")), victim_headers(call),
                                   b"%PDF-1.4\n" + b"x" * 891, name="a.pdf"))
    assert (await victim_post(call, 1000)).status == 201
    async with server.app[DB]() as db:
        assert (await db.get(Upload, uid)).status == "complete"
