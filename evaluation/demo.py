"""``evr demo --month``: a month of made-up incidents and survey answers, so a force
evaluating EVR (or a developer) sees the dashboard and the indicators as they would
look after a month of use, without a spreadsheet and without real victims.

Every incident is made up and marked so: CAD references ``DEMO-…``, entered by
``demo``, victims with no name and Ofcom's drama phone numbers (07700 900xxx); the
officers are ``demo.officer1`` to ``5``, disabled (nobody signs in as them). The
incidents take the paths real ones do (rejected at triage; taken, attended, recorded,
reviewed, most with a crime outcome; the newest still in the queue or the call), with
their timelines, so every figure and chart has something true to its kind to show.

With trial mode on (``[trial]``), each incident gets its arm as a real one would, and
the control arm's incidents take the control path (attended in person days later, an
outcome recorded), so ``by_arm=1`` and the dashboard's comparison have two arms.

It refuses a database that holds incidents already (a force's real data must never be
mixed with made-up data) unless told ``--force``, and the audit log records that it ran.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Optional
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from evr.db import Incident, IncidentEvent, SurveyAnswer, User

from .trial import TrialDesign

CATEGORIES = ("theft", "criminal_damage", "harassment", "fraud", "burglary_non_dwelling", "assault_no_injury",
              "domestic_non_urgent", "vehicle_crime")
OFFICERS = 5


class DemoRefused(Exception):
    """The database holds incidents already."""


@dataclass(frozen=True)
class Made:
    incidents: int
    answers: int


def _event(incident_id: str, at: datetime, kind: str, before: Optional[str], after: str, actor: str,
           role: str, reason: Optional[str] = None) -> dict[str, Any]:
    return {"incident_id": incident_id, "at": at, "kind": kind, "from_state": before, "to_state": after,
            "actor": actor, "role": role, "reason": reason, "details": None}


def _incident(n: int, reported: datetime, now: datetime, rng: random.Random, officers: list[tuple[int, str]],
              targets: dict[str, float], trial: TrialDesign) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """One incident and its timeline, and whether its victim was attended (may answer a survey)."""
    iid = str(uuid.uuid4())
    cad_ref = f"DEMO-{reported:%Y%m%d}-{n:04d}"
    arm = trial.arm(cad_ref, n)
    grade = rng.choice([2, 3, 3, 3, 4])
    row: dict[str, Any] = {
        "id": iid, "cad_ref": cad_ref, "state": "triage", "arm": arm, "grade": grade,
        "category": rng.choice(CATEGORIES), "reported_at": reported, "summary": "Made-up incident (evr demo).",
        "victim": {"phone": f"07700 900{rng.randrange(1000):03d}", "preferred_contact": "sms", "language": "en"},
        "eligibility": {}, "vulnerability": rng.random() < 0.15, "high_harm": False, "created_at": reported,
        "created_by": "demo", "created_by_role": "call_handler", "created_by_id": 0, "updated_at": reported,
        "allocated_to": None, "allocated_name": None, "dispatched_to": None, "dispatched_name": None,
        "dispatched_at": None, "arrived_at": None, "call_closed_at": None, "phoned_at": None,
        "submitted_at": None, "reviewed_at": None, "review_overdue": None, "review": None,
        "crime_outcome": None, "crime_outcome_at": None,
    }
    events = [_event(iid, reported, "created", None, "triage", "demo", "call_handler")]
    at = reported + timedelta(minutes=rng.uniform(5, 40))

    def step(state: str, kind: str, actor: str, role: str, reason: Optional[str] = None) -> bool:
        """Move on to ``state`` at ``at``, unless that is still to come."""
        if at > now:
            return False
        events.append(_event(iid, at, kind, row["state"], state, actor, role, reason))
        row["state"], row["updated_at"] = state, at
        return True

    if arm == "control":  # normal dispatch: attended in person, days later; kept for comparison
        row["state"] = events[0]["to_state"] = "control"
        attended = reported + timedelta(hours=rng.lognormvariate(3.5, 0.8))  # median about 33 h
        if attended <= now:
            row["arrived_at"] = attended
            events.append(_event(iid, attended, "attended", "control", "control", "key:demo-cad", "integration"))
            if rng.random() < 0.7 and attended + timedelta(days=2) < now:
                row.update(crime_outcome=rng.choice([1, 2, 8, 14, 14, 15, 16, 16, 18, 18, 18]),
                           crime_outcome_at=attended + timedelta(days=2))
        return row, events, False
    if rng.random() < 0.15:
        step("rejected", "reject", "demo.sergeant", "sergeant", "Offender at the address: attend in person")
        return row, events, False
    if not step("queued", "queue", "demo.sergeant", "sergeant"):
        return row, events, False
    # Response: a grade's target is met most of the time; a few wait long.
    target = targets.get(str(grade), 48.0) * 60
    at = reported + timedelta(minutes=min(rng.lognormvariate(3.6 if grade == 2 else 4.6, 0.9), target * 1.5))
    officer_id, officer = rng.choice(officers)
    if not step("dispatched", "take", officer, "officer"):
        return row, events, False
    row.update(dispatched_to=officer_id, dispatched_name=officer, dispatched_at=at)
    at += timedelta(minutes=rng.uniform(2, 10))
    if not step("in_call", "call", officer, "officer"):
        return row, events, False
    row["arrived_at"] = at
    at += timedelta(minutes=rng.uniform(25, 70))
    if at > now:
        return row, events, True
    row["call_closed_at"] = at
    at += timedelta(minutes=rng.uniform(20, 180))
    if not step("awaiting_review", "submit", officer, "officer"):
        return row, events, True
    row["submitted_at"] = at
    due = row["call_closed_at"] + timedelta(hours=24)
    at += timedelta(hours=rng.choice([1, 2, 4, 8, 16, 20, 30]))
    outcome = rng.choices(["finalised", "patrol_suspect", "patrol_enquiries"], [6, 2, 2])[0]
    if not step(outcome, "review", "demo.sergeant", "sergeant"):
        return row, events, True
    row.update(reviewed_at=at, review_overdue=at > due,
               review={"outcome": outcome, "reviewer": "demo.sergeant", "investigation_plan": None})
    if rng.random() < 0.7 and at + timedelta(days=2) < now:
        row.update(crime_outcome=rng.choice([1, 2, 3, 8, 14, 14, 15, 16, 18, 18]),
                   crime_outcome_at=at + timedelta(days=2))
    return row, events, True


def _answer(day: Any, incident: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "answered_on": day, "satisfied": rng.choice([5, 5, 5, 4, 4, 4, 3, 2, None]),
            "would_use_again": rng.choice([True, True, True, True, False, None]),
            "felt_safe": rng.choice([5, 5, 4, 4, 3, None]), "confidence_in_police": rng.choice([5, 4, 4, 3, 2, None]),
            "grade": incident["grade"], "category": incident["category"], "arm": None}


async def make_month(db: AsyncSession, now: datetime, zone_name: str, targets: dict[str, float], *,
                     days: int = 30, per_day: int = 20, seed: int = 2026, force: bool = False,
                     password_hash: str = "!demo", trial: Optional[TrialDesign] = None) -> Made:
    """Add ``days`` of made-up incidents (about ``per_day`` a day) ending ``now``, and the
    survey answers of about a third of the victims attended, in ``db``'s transaction."""
    if not force and await db.scalar(select(func.count()).select_from(Incident)):
        raise DemoRefused("the database holds incidents already; made-up ones are never mixed with real ones "
                          "(--force adds them anyway)")
    rng = random.Random(seed)
    zone = ZoneInfo(zone_name)
    trial = trial or TrialDesign()
    officers = []
    for i in range(1, OFFICERS + 1):
        name = f"demo.officer{i}"
        user = await db.scalar(select(User).where(User.username == name))
        if user is None:
            user = User(username=name, role="officer", password_hash=password_hash, created_at=now, disabled=True)
            db.add(user)
            await db.flush()
        officers.append((user.id, name))
    incidents: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    first = now.astimezone(zone).date() - timedelta(days=days - 1)
    for d in range(days):
        day = first + timedelta(days=d)
        for _ in range(max(0, round(rng.gauss(per_day, per_day / 4)))):
            local = datetime.combine(day, time(0), tzinfo=zone) + timedelta(minutes=rng.uniform(7 * 60, 23 * 60))
            reported = local.astimezone(now.tzinfo)
            if reported > now:
                continue
            row, timeline, attended = _incident(len(incidents), reported, now, rng, officers, targets, trial)
            incidents.append(row)
            events.extend(timeline)
            if attended and row["call_closed_at"] and rng.random() < 0.35:
                answered = row["call_closed_at"] + timedelta(hours=rng.uniform(0.1, 240))
                if answered <= now:
                    answers.append({**_answer(answered.astimezone(zone).date(), row, rng), "arm": row["arm"]})
    for start in range(0, len(incidents), 1000):
        await db.execute(insert(Incident), incidents[start:start + 1000])
    for start in range(0, len(events), 1000):
        await db.execute(insert(IncidentEvent), events[start:start + 1000])
    if answers:
        await db.execute(insert(SurveyAnswer), answers)
    return Made(len(incidents), len(answers))
