"""Retention and the audit log's web API under hostile input and faults (issue 11,
findings 3 and 11): query parameters with non-ASCII digits, huge numbers, bad dates
or control characters are a 400 naming them, never a 500; a retention change and its
audit entry commit together; an export is logged before it is sent."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from test_retention import add_item, classify, json_of, people  # noqa: F401 (fixture)
from yarl import URL

from evr.db import AuditEntry, RetentionAssignment, RetentionHold
from evr.errors import ApiError
from evr.http import DB
from evr.retention.api import MAX_CURSOR, audit_cursor, due_cursor, query_count, query_text, query_time

BAD_NUMBERS = ["\u00b2", "\u0663", "\u0661\u0660", "\uff15", "99999999999999999999999", str(2**63), "-1", "0",
               "1.5", "1e3", " 5", "+5", "%ED%A0%80", "%00", "0x10"]
BAD_TIMES = ["yesterday", "2032-13-01", "2032-01-31T09:00:00", "0001-01-01T00:00:00+14:00",
             "9999-12-31T23:59:59-14:00", "\u0662\u0660\u0663\u0662-\u0660\u0661-\u0663\u0661", "%ED%A0%80",
             "2032-01-31%00", "9" * 5000]


async def get(client: Any, path: str) -> Any:
    """GET ``path`` as written: ``%`` escapes kept as they are (``%ED%A0%80`` is not UTF-8),
    anything else outside printable ASCII percent-encoded as UTF-8."""
    return await client.get(URL(quote(path, safe="/?&=%|:+-"), encoded=True))


async def bad_request(response: Any) -> None:
    assert response.status == 400, (str(response.url), await response.text())
    assert (await response.json())["error"]["code"] in ("invalid_parameter", "bad_request")


# -- numbers and times in query strings --------------------------------------------------


async def test_bad_numbers_in_query_strings_are_400(server, people):
    _, records, _ = people
    for value in BAD_NUMBERS:
        for path in (f"/api/audit?limit={value}", f"/api/audit?cursor={value}", f"/api/retention/due?limit={value}",
                     f"/api/retention/certificates?limit={value}"):
            if "cursor" in path and value == "0":
                continue  # entry id 0 is a valid cursor (before the first entry)
            await bad_request(await get(records.client, path))


async def test_bad_times_in_query_strings_are_400(server, people):
    _, records, _ = people
    for value in BAD_TIMES:
        for path in (f"/api/audit?since={value}", f"/api/audit?until={value}", f"/api/retention/due?before={value}",
                     f"/api/retention/certificates?before={value}", f"/api/retention/schedule.csv?before={value}",
                     f"/api/retention/due?cursor={value}|{uuid.uuid4()}"):
            await bad_request(await get(records.client, path))


BAD_TEXT = [
    "/api/audit?object=a%00b", "/api/audit?actor=%01", "/api/audit?action=" + "x" * 300,
    "/api/audit?consultation=%00", "/api/retention/certificates?consultation=not-an-id",
    "/api/retention/certificates?item=%00", "/api/retention/due?cursor=2032-01-31T00:00:00Z|%00",
    "/api/retention/due?cursor=nothing",
]


async def test_bad_text_in_query_strings_is_400(server, people):
    _, records, _ = people
    for path in BAD_TEXT:
        await bad_request(await get(records.client, path))


async def test_extreme_but_valid_values_work(server, people):
    _, records, cid = people
    for path in ("/api/audit?since=0001-01-01&until=9999-12-31T23:59:59Z&limit=500",
                 f"/api/audit?cursor={MAX_CURSOR}&order=desc", "/api/audit?cursor=0",
                 "/api/retention/due?before=9999-12-31&limit=1", f"/api/retention/certificates?consultation={cid}",
                 "/api/retention/schedule.csv?before=9999-12-31"):
        response = await get(records.client, path)
        assert response.status == 200, (path, await response.text())


async def test_an_unknown_certificate_id_is_404(server, people):
    _, records, _ = people
    for cert in ("nothing", "%00", str(uuid.uuid4())):
        response = await get(records.client, f"/api/retention/certificates/{cert}")
        assert response.status == 404, await response.text()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=25), st.integers(-2**70, 2**70).map(str)))
def test_query_counts_are_ascii_digits_in_range_or_400(text):
    try:
        number = query_count(text, "limit", 7, 500)
    except ApiError as exc:
        assert exc.status == 400
        return
    assert number == 7 if text == "" else (text.isascii() and text.isdigit() and number == int(text))
    assert 1 <= number <= 500


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=25), st.integers(-2**70, 2**70).map(str)))
def test_audit_cursors_are_entry_ids_or_400(text):
    try:
        cursor = audit_cursor(text)
    except ApiError as exc:
        assert exc.status == 400
        return
    assert cursor is None if text == "" else (text.isascii() and 0 <= cursor <= MAX_CURSOR)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
                 st.dates().map(str)))
def test_query_times_parse_or_400(text):
    try:
        value = query_time(text, "since")
    except ApiError as exc:
        assert exc.status == 400
        return
    assert value is None or value.utcoffset().total_seconds() == 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_due_cursors_and_query_text_never_fail_otherwise(text):
    for parse in (due_cursor, lambda t: query_text(t, "object")):
        try:
            parse(text)
        except ApiError as exc:
            assert exc.status == 400


# -- a change and its audit entry together -------------------------------------------


async def count(server: Any, model: Any) -> int:
    async with server.app[DB]() as db:
        return await db.scalar(select(func.count()).select_from(model))


async def test_a_class_set_whose_audit_entry_fails_is_not_set(server, people, audit_fails):
    officer, _, cid = people
    await add_item(server, cid)
    entries = await count(server, AuditEntry)
    audit_fails()
    response = await officer.client.put(f"/api/consultations/{cid}/retention", headers=officer.headers(),
                                        json={"class": "group2", "reason": "offence type"})
    assert response.status == 500
    async with server.app[DB]() as db:
        assert await db.get(RetentionAssignment, cid) is None
    assert await count(server, AuditEntry) == entries


async def test_a_hold_whose_audit_entry_fails_is_not_placed(server, people, audit_fails):
    _, records, cid = people
    footage = await add_item(server, cid)
    audit_fails()
    response = await records.post("/api/retention/hold", {"id": footage["id"], "reason": "disclosure"})
    assert response.status == 500
    assert await count(server, RetentionHold) == 0


async def test_an_export_whose_audit_entry_fails_is_not_sent(server, people, audit_fails):
    _, records, _ = people
    audit_fails()
    response = await records.get("/api/retention/schedule.csv")
    assert response.status == 500
    assert "item_id" not in await response.text()


@pytest.mark.parametrize("reason", ["court\u0000order", "a\u0007b", "\u001b[31mred"])
async def test_reasons_with_control_characters_are_422_and_change_nothing(server, people, reason):
    officer, records, cid = people
    footage = await add_item(server, cid)
    entries = await count(server, AuditEntry)
    for response in (
        await records.post("/api/retention/hold", {"id": footage["id"], "reason": reason}),
        await records.post("/api/retention/review", {"id": footage["id"], "decision": "retain", "reason": reason}),
        await officer.client.put(f"/api/consultations/{cid}/retention", headers=officer.headers(),
                                 json={"class": "group2", "reason": reason}),
    ):
        assert response.status == 422, await response.text()
    # In a query string the same is a malformed parameter, refused before any handler.
    opened = await records.get(f"/api/retention/items/{footage['id']}/content?key={footage['prefix']}part-000.bin"
                               f"&reason={URL.build(query={'r': reason}).query_string[2:]}")
    assert opened.status == 400 and (await opened.json())["error"]["code"] == "invalid_parameter"
    assert await count(server, RetentionHold) == 0 and await count(server, AuditEntry) == entries
    await classify(officer, cid, "group2", reason="multi-line\nreasons\tstay fine")


async def test_a_next_review_out_of_range_is_422(server, people):
    _, records, cid = people
    footage = await add_item(server, cid)
    response = await records.post("/api/retention/review", {"id": footage["id"], "decision": "retain",
                                                             "reason": "r", "next_review": "0001-01-01T00:00:00+14:00"})
    assert response.status == 422, await response.text()


async def test_a_disposal_whose_start_cannot_be_logged_removes_nothing(server, clock, people, audit_fails):
    """Erasure is the one change that cannot be rolled back: the content went before
    the log said so, and a failing audit write afterwards left it gone without an
    ``evidence.erase`` entry. Now the claim and a ``retention.dispose_start`` entry
    commit together before anything is removed."""
    from test_retention import objects

    from evr.db import RetentionItem

    _, records, cid = people
    footage = await add_item(server, cid)
    clock.advance(days=32)
    audit_fails()
    response = await records.post("/api/retention/dispose", {"ids": [footage["id"]], "execute": True})
    assert response.status == 500
    assert len(await objects(server, footage["prefix"])) == 2
    async with server.app[DB]() as db:
        assert (await db.get(RetentionItem, footage["id"])).state != "disposing"


async def test_a_disposal_run_is_logged_before_it_erases(server, clock, people):
    _, records, cid = people
    footage = await add_item(server, cid)
    clock.advance(days=32)
    await json_of(await records.post("/api/retention/dispose", {"ids": [footage["id"]], "execute": True}), 200)
    async with server.app[DB]() as db:
        entries = list(await db.scalars(select(AuditEntry).where(AuditEntry.action.in_(
            ("retention.dispose_start", "evidence.erase"))).order_by(AuditEntry.id)))
    assert [e.action for e in entries] == ["retention.dispose_start", "evidence.erase"]
    assert entries[0].details["items"] == [footage["id"]] and entries[0].actor == "rita"
