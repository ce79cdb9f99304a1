"""Performance indicators (``GET /api/kpis``, ``kpis.csv``) against figures worked out by
hand on a small fixed set of incidents, on SQLite and PostgreSQL: the force's days
across the autumn clock change (Europe/London, 25 October 2026 has 25 hours), the
period's edges to the minute, nearest-rank percentiles, shares, weeks from Monday."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import insert, select

from evr.db import Incident, User
from evr.evaluation.kpis import Period, parse_period
from evr.http import DB

UTC = timezone.utc


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


#: (name, reported_at UTC, state, grade, minutes to arrival, to the record, reviewed
#: and overdue, crime outcome, officer). Europe/London: BST (UTC+1) until 01:00 UTC on
#: 25 October 2026, GMT after.
ROWS = [
    ("X1", "2026-10-23T22:59", "finalised", 3, 5, None, None, None, 1),  # local 23 Oct 23:59: before
    ("A", "2026-10-23T23:00", "finalised", 3, 30, 120, False, 1, 1),    # local 24 Oct 00:00
    ("B", "2026-10-24T23:30", "finalised", 2, 90, 200, True, 14, 2),    # local 25 Oct 00:30 (BST)
    ("C", "2026-10-25T23:30", "patrol_suspect", 3, 10, 40, False, 16, 1),  # local 25 Oct 23:30 (GMT)
    ("D", "2026-10-26T10:00", "in_call", 3, 60, None, None, None, 3),
    ("E", "2026-10-26T23:59", "rejected", 3, None, None, None, None, None),  # local 26 Oct 23:59: in
    ("F", "2026-10-26T12:00", "triage", 4, None, None, None, None, None),
    ("G", "2026-10-26T13:00", "queued", 3, None, None, None, None, None),
    ("X2", "2026-10-27T00:00", "queued", 3, None, None, None, None, None),  # local 27 Oct 00:00: after
]


@pytest.fixture
async def incidents(server: Any, users: Any) -> None:
    for name in ("o1", "o2", "o3"):
        await users(name, "officer")
    async with server.app[DB]() as db:
        ids = {u.username: u.id for u in await db.scalars(select(User))}
        rows = []
        for name, reported, state, grade, arrive, record, overdue, outcome, officer in ROWS:
            at = _at(reported)
            rows.append({
                "id": str(uuid.uuid4()), "cad_ref": f"CAD-K-{name}", "state": state, "grade": grade,
                "category": "theft", "reported_at": at, "summary": "", "victim": {}, "eligibility": {},
                "vulnerability": False, "high_harm": False, "created_at": at, "updated_at": at,
                "created_by": "carl", "created_by_role": "call_handler", "created_by_id": 1,
                "dispatched_to": ids[f"o{officer}"] if officer else None,
                "arrived_at": at + timedelta(minutes=arrive) if arrive is not None else None,
                "submitted_at": at + timedelta(minutes=record) if record is not None else None,
                "reviewed_at": at + timedelta(minutes=record + 60) if overdue is not None and record else None,
                "review_overdue": overdue, "crime_outcome": outcome,
                "crime_outcome_at": at + timedelta(days=1) if outcome else None,
            })
        await db.execute(insert(Incident), rows)
        await db.commit()


async def _kpis(who: Any, query: str, status: int = 200) -> Any:
    response = await who.get(f"/api/kpis?{query}")
    assert response.status == status, await response.text()
    return await response.json()


async def test_figures_worked_out_by_hand(incidents, staff):
    sergeant = await staff("sue", "sergeant")
    got = await _kpis(sergeant, "from=2026-10-24&to=2026-10-26")
    assert got["from"] == "2026-10-23T23:00:00.000Z" and got["to"] == "2026-10-27T00:00:00.000Z"
    assert got["timezone"] == "Europe/London"
    assert got["incidents"] == {"created": 7, "to_evr": 5, "rejected": 1}
    assert got["officers_active"] == 3
    # Arrivals after 30, 90, 10, 60 minutes: sorted 10 30 60 90; p50 is the 2nd, p90 the 4th.
    # Within target: B (grade 2, 1 h) arrived after 90 minutes; the three of grade 3 (48 h) in time.
    assert got["response_minutes"] == {"n": 4, "p50": 30.0, "p90": 90.0, "mean": 47.5, "within_target_pct": 75.0}
    assert got["to_investigation_end_minutes"] == {"n": 3, "p50": 120.0, "p90": 200.0}
    assert got["reviews"] == {"n": 3, "within_24h_pct": 66.7}
    assert got["crime_outcomes"] == {"n": 3, "positive_pct": 33.3, "outcome_14_pct": 33.3, "outcome_16_pct": 33.3}
    # No survey answers yet: no share, not a share of 0.
    assert got["satisfaction"] == {"responses": 0, "satisfied_pct": None, "would_use_again_pct": None}
    # 25 October has 25 hours; B (00:30 BST) and C (23:30 GMT) are both on it.
    assert got["series"] == [
        {"start": "2026-10-24", "incidents": 1, "to_evr": 1, "rejected": 0,
         "response_p50_minutes": 30.0, "satisfied_pct": None},
        {"start": "2026-10-25", "incidents": 2, "to_evr": 2, "rejected": 0,
         "response_p50_minutes": 10.0, "satisfied_pct": None},
        {"start": "2026-10-26", "incidents": 4, "to_evr": 2, "rejected": 1,
         "response_p50_minutes": 60.0, "satisfied_pct": None},
    ]


async def test_weeks_start_on_monday_and_the_edges_are_to_the_minute(incidents, staff):
    admin = await staff("ada", "admin")
    weeks = await _kpis(admin, "from=2026-10-24&to=2026-10-26&group_by=week")
    # 24 October 2026 is a Saturday: its week is Monday 19 October's, cut at the period's start.
    assert [(s["start"], s["incidents"], s["response_p50_minutes"]) for s in weeks["series"]] == [
        ("2026-10-19", 3, 30.0), ("2026-10-26", 4, 60.0)]
    # RFC 3339 bounds: exactly the instants asked for (from inclusive, to exclusive).
    edge = await _kpis(admin, "from=2026-10-23T22:59:00Z&to=2026-10-26T23:59:00Z")
    assert edge["incidents"]["created"] == 7  # X1 in, E (23:59) out
    whole = await _kpis(admin, "from=2026-10-01&to=2026-10-31")
    assert whole["incidents"]["created"] == 9 and len(whole["series"]) == 31
    assert sum(s["incidents"] for s in whole["series"]) == 9
    empty = await _kpis(admin, "from=2026-01-01&to=2026-01-02")
    assert empty["incidents"] == {"created": 0, "to_evr": 0, "rejected": 0}
    assert empty["response_minutes"] == {"n": 0, "p50": None, "p90": None, "mean": None, "within_target_pct": None}


async def test_series_as_csv(incidents, staff):
    sergeant = await staff("sue", "sergeant")
    response = await sergeant.get("/api/kpis.csv?from=2026-10-24&to=2026-10-26")
    assert response.status == 200 and response.content_type == "text/csv"
    assert "evr-kpis-2026-10-24-to-2026-10-26.csv" in response.headers["Content-Disposition"]
    assert (await response.text()).splitlines() == [
        "start,incidents,to_evr,rejected,response_p50_minutes,satisfied_pct",
        "2026-10-24,1,1,0,30.0,", "2026-10-25,2,2,0,10.0,", "2026-10-26,4,2,1,60.0,"]


@pytest.mark.parametrize("query, code", [
    ("from=2026-13-01", "invalid_parameter"), ("to=yesterday", "invalid_parameter"),
    ("from=2026-10-26&to=2026-10-24", "invalid_parameter"), ("group_by=month", "invalid_parameter"),
    ("from=2020-01-01&to=2026-01-01", "period_too_long"),
    # Far dates are refused, not carried into calendar arithmetic that overflows (a 500).
    ("to=9999-12-31", "invalid_parameter"), ("from=0001-01-01", "invalid_parameter"),
    ("from=9999-12-01T00:00:00Z&to=9999-12-31T23:59:59Z", "invalid_parameter"),
])
async def test_bad_parameters_are_400s_naming_the_problem(staff, query, code):
    sergeant = await staff("sue", "sergeant")
    got = await _kpis(sergeant, query, 400)
    assert got["error"]["code"] == code


@pytest.mark.parametrize("role", ["officer", "records", "call_handler"])
async def test_only_sergeants_and_admin_see_the_figures(staff, role):
    who = await staff("someone", role)
    assert (await who.get("/api/kpis")).status == 403
    assert (await who.get("/api/kpis.csv")).status == 403


def test_the_default_period_is_the_last_30_local_days_today_included():
    now = _at("2026-03-29T12:00")  # the day the clocks go forward: 23 hours
    period = parse_period({}, now, "Europe/London")
    assert period.until == _at("2026-03-29T23:00")  # midnight BST
    assert period.since == _at("2026-02-28T00:00")
    days = period.buckets()
    assert len(days) == 30 and days[-1].start.isoformat() == "2026-03-29"
    assert days[-1].until - days[-1].since == timedelta(hours=23)


def test_a_day_that_the_clock_change_lengthens():
    period = Period(_at("2026-10-24T23:00"), _at("2026-10-25T23:59"), parse_period({}, _at("2026-10-25T12:00"),
                                                                                    "Europe/London").zone, "day")
    [day] = period.buckets()
    assert day.start.isoformat() == "2026-10-25" and day.since == _at("2026-10-24T23:00")


async def test_filters_by_grade_and_category(incidents, staff):
    sergeant = await staff("sue", "sergeant")
    grade3 = await _kpis(sergeant, "from=2026-10-24&to=2026-10-26&grade=3")
    assert grade3["grade"] == 3 and grade3["incidents"]["created"] == 5  # A C D E G
    assert grade3["response_minutes"]["n"] == 3 and grade3["response_minutes"]["p50"] == 30.0  # 10 30 60
    none = await _kpis(sergeant, "from=2026-10-24&to=2026-10-26&category=burglary")
    assert none["incidents"]["created"] == 0 and none["category"] == "burglary"
    for bad in ("grade=9", "grade=three", "category=" + "x" * 65):
        assert (await _kpis(sergeant, bad, 400))["error"]["code"] == "invalid_parameter"


async def test_response_times_in_bins_against_the_target(incidents, staff):
    sergeant = await staff("sue", "sergeant")
    response = await sergeant.get("/api/kpis/response_times?from=2026-10-24&to=2026-10-26")
    assert response.status == 200
    bins = {(b["from_minutes"], b["to_minutes"]): b for b in (await response.json())["bins"]}
    # C 10 min, A 30, D 60 (grade 3: within 48 h); B 90 (grade 2: past its hour).
    assert bins[(0, 15)] == {"from_minutes": 0, "to_minutes": 15, "incidents": 1, "within_target": 1,
                             "past_target": 0, "no_target": 0}
    assert bins[(30, 60)]["incidents"] == 1 and bins[(60, 120)] == {
        "from_minutes": 60, "to_minutes": 120, "incidents": 2, "within_target": 1, "past_target": 1, "no_target": 0}
    assert sum(b["incidents"] for b in bins.values()) == 4 and bins[(2880, None)]["incidents"] == 0


async def test_satisfaction_from_survey_answers_only_from_five(incidents, staff, server):
    from datetime import date

    from evr.db import SurveyAnswer

    answers = [  # (local day answered, satisfied, would use again, grade)
        ("2026-10-23", 1, False, 3),  # before the period
        ("2026-10-24", 5, True, 3), ("2026-10-24", 4, True, 3), ("2026-10-24", 4, False, 2),
        ("2026-10-24", 2, True, 3), ("2026-10-24", 1, None, 3),
        ("2026-10-25", 5, True, 3), ("2026-10-25", 5, None, 3), ("2026-10-25", None, None, 3),
        ("2026-10-27", 5, True, 3),  # after it
    ]
    async with server.app[DB]() as db:
        db.add_all([SurveyAnswer(id=str(uuid.uuid4()), answered_on=date.fromisoformat(day), satisfied=satisfied,
                                 would_use_again=again, grade=grade, category="theft")
                    for day, satisfied, again, grade in answers])
        await db.commit()
    sergeant = await staff("sue", "sergeant")
    got = await _kpis(sergeant, "from=2026-10-24&to=2026-10-26")
    # 8 answers; 7 rated satisfaction, 5 of them 4 or 5; 5 answered "again", 4 yes.
    assert got["satisfaction"] == {"responses": 8, "satisfied_pct": 71.4, "would_use_again_pct": 80.0}
    # 24 October: 5 rated, 3 of them (5, 4, 4) satisfied. 25 October: 2 rated, too few to show.
    assert [s["satisfied_pct"] for s in got["series"]] == [60.0, None, None]
    # Grade 3 only: 6 rated, 4 satisfied; 4 answered "again": too few to show; no day has 5.
    grade3 = await _kpis(sergeant, "from=2026-10-24&to=2026-10-26&grade=3")
    assert grade3["satisfaction"] == {"responses": 7, "satisfied_pct": 66.7, "would_use_again_pct": None}
    assert [s["satisfied_pct"] for s in grade3["series"]] == [None, None, None]
