"""``evr demo``: a month of made-up incidents whose timelines agree with their states,
marked as made up, never mixed into a database with real incidents, recorded in the
audit log; and the indicators read them."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from datetime import timedelta

from sqlalchemy import select

from evr.db import AuditEntry, Incident, IncidentEvent, SurveyAnswer, User, make_engine, sessionmaker


def _evr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evr", *args], capture_output=True, text=True, timeout=120)


async def test_a_made_up_month_its_refusal_and_its_figures(tmp_path):
    data = str(tmp_path / "data")
    made = _evr("demo", "--month", "--per-day", "8", "--data", data)
    assert made.returncode == 0, made.stderr
    assert "made-up incidents over 30 days" in made.stdout
    again = _evr("demo", "--days", "3", "--data", data)
    assert again.returncode == 2 and "holds incidents already" in again.stderr
    assert _evr("demo", "--days", "0", "--data", data).returncode == 2

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'evr.sqlite3'}")
    try:
        async with sessionmaker(engine)() as db:
            incidents = list(await db.scalars(select(Incident)))
            events = defaultdict(list)
            for e in await db.scalars(select(IncidentEvent).order_by(IncidentEvent.id)):
                events[e.incident_id].append(e)
            officers = list(await db.scalars(select(User).where(User.username.like("demo.%"))))
            answers = list(await db.scalars(select(SurveyAnswer)))
            audit = list(await db.scalars(select(AuditEntry).where(AuditEntry.action == "demo.seed")))
    finally:
        await engine.dispose()
    assert 150 < len(incidents) < 350 and all(i.cad_ref.startswith("DEMO-") for i in incidents)
    for incident in incidents:  # the timeline ends in the state the incident is in
        timeline = events[incident.id]
        assert timeline[0].kind == "created" and timeline[-1].to_state == incident.state
        if incident.arrived_at:
            assert incident.reported_at < incident.dispatched_at < incident.arrived_at
        if incident.reviewed_at:
            assert incident.review_overdue == (incident.reviewed_at > incident.call_closed_at + timedelta(hours=24))
    states = {i.state for i in incidents}
    assert {"rejected", "finalised"} <= states
    assert len(officers) == 5 and all(o.disabled and o.role == "officer" for o in officers)
    assert answers and all(a.satisfied in (None, 1, 2, 3, 4, 5) for a in answers)
    [entry] = audit
    assert entry.details["incidents"] == len(incidents) and entry.details["survey_answers"] == len(answers)
