"""Trial mode: arms by the CAD reference's last digit or a seeded block design, control
incidents kept out of EVR's queue and figures but recorded (attendance, outcome), and
``by_arm=1`` with 95 % intervals checked against published values (Wilson; Newcombe's
worked example) and hand-worked figures, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import insert
from test_incidents import _incident, _json

from evr.db import Incident
from evr.evaluation.trial import TrialDesign, median_ranks, newcombe, wilson
from evr.http import DB


def test_wilson_newcombe_and_median_ranks_match_published_values():
    assert wilson(8, 10) == (49.0, 94.3)  # 0.4902 to 0.9433
    assert wilson(0, 10) == (0.0, 27.8) and wilson(10, 10) == (72.2, 100.0)
    assert wilson(3, 0) is None
    # Newcombe (1998), method 10, 56/70 against 48/80: 0.0524 to 0.3339.
    assert newcombe((56, 70), (48, 80)) == (20.0, 5.2, 33.4)
    assert median_ranks(100) == (40, 61)  # the ranks of the usual tables
    assert median_ranks(5) is None


def test_arms_by_last_digit_and_by_seeded_blocks():
    digits = TrialDesign.from_config({"enabled": True})
    assert [digits.arm(f"CAD-{d}", 0) for d in "0123"] == ["treatment", "control", "treatment", "control"]
    assert digits.arm("CAD-12A", 0) is None and TrialDesign().arm("CAD-2", 0) is None
    blocks = TrialDesign.from_config({"enabled": True, "assign": "block", "seed": 7, "block_size": 6})
    drawn = [blocks.arm("x", i) for i in range(60)]
    for start in range(0, 60, 6):
        assert Counter(drawn[start:start + 6]) == {"treatment": 3, "control": 3}
    assert drawn == [blocks.arm("y", i) for i in range(60)]  # the seed, not the reference, decides
    other = TrialDesign.from_config({"enabled": True, "assign": "block", "seed": 8, "block_size": 6})
    assert drawn != [other.arm("x", i) for i in range(60)]
    for bad in ({"assign": "coin"}, {"block_size": 3}, {"enabled": "yes"}, {"sede": 1}, [1]):
        with pytest.raises(ValueError):
            TrialDesign.from_config(bad)


@pytest.fixture
def trial(settings: Any) -> None:
    settings.trial = {"enabled": True, "assign": "last_digit"}


async def test_control_incidents_stay_out_of_evr_but_are_recorded(trial, staff, server, clock):
    cad = await staff("cad", "integration")
    sergeant, officer = await staff("sue", "sergeant"), await staff("alice", "officer")
    treated = await _json(await cad.post("/api/incidents", _incident("CAD-2026-000124")), 201)
    control = await _json(await cad.post("/api/incidents", _incident("CAD-2026-000125")), 201)
    assert (treated["state"], treated["arm"]) == ("triage", "treatment")
    assert (control["state"], control["arm"]) == ("control", "control")
    triage = await _json(await sergeant.get("/api/incidents?state=triage"), 200)
    assert [i["cad_ref"] for i in triage["incidents"]] == ["CAD-2026-000124"]
    refused = await sergeant.post(f"/api/incidents/{control['id']}/triage", {"decision": "queue"})
    assert refused.status == 409
    assert (await officer.get(f"/api/incidents/{control['id']}")).status == 404  # not an officer's
    at = (datetime.now(timezone.utc) - timedelta(minutes=20)).isoformat()
    attended = await _json(await sergeant.post(f"/api/incidents/{control['id']}/attended", {"at": at}), 200)
    assert attended["arrived_at"] and attended["timeline"][-1]["kind"] == "attended"
    early = await sergeant.post(f"/api/incidents/{control['id']}/attended", {"at": "2020-01-01T00:00:00Z"})
    assert early.status == 422
    assert (await sergeant.post(f"/api/incidents/{treated['id']}/attended", {"at": at})).status == 409
    outcome = await _json(await sergeant.post(f"/api/incidents/{control['id']}/crime_outcome", {"code": 16}), 200)
    assert outcome["crime_outcome"]["code"] == 16
    # EVR's own figures leave the control arm out.
    figures = await _json(await sergeant.get("/api/kpis"), 200)
    assert figures["incidents"]["created"] == 1 and figures["crime_outcomes"]["n"] == 0


#: (arm, minutes to attendance, reviewed in time) of incidents reported 24 October 2026.
ARM_ROWS = [("treatment", m, i < 3) for i, m in enumerate([10, 20, 30, 40, 50, 60])] + [
    ("control", m, None) for m in [60, 120, 180, 240, 300, 360]]


async def insert_arms(server: Any) -> None:
    """:data:`ARM_ROWS`, reported 24 October 2026 at 10:00 UTC, into the server's database."""
    reported = datetime(2026, 10, 24, 10, tzinfo=timezone.utc)
    async with server.app[DB]() as db:
        await db.execute(insert(Incident), [{
            "id": str(uuid.uuid4()), "cad_ref": f"CAD-T-{n}", "state": "finalised" if arm == "treatment" else "control",
            "arm": arm, "grade": 3, "category": "theft", "reported_at": reported, "summary": "", "victim": {},
            "eligibility": {}, "vulnerability": False, "high_harm": False, "created_at": reported,
            "updated_at": reported, "created_by": "cad", "created_by_role": "integration", "created_by_id": -1,
            "arrived_at": reported + timedelta(minutes=m),
            "reviewed_at": reported + timedelta(hours=2) if in_time is not None else None,
            "review_overdue": (not in_time) if in_time is not None else None,
        } for n, (arm, m, in_time) in enumerate(ARM_ROWS)])
        await db.commit()


async def test_by_arm_with_intervals_and_the_difference(staff, server):
    await insert_arms(server)
    sergeant = await staff("sue", "sergeant")
    got = await _json(await sergeant.get("/api/kpis?from=2026-10-24&to=2026-10-24&by_arm=1"), 200)
    treatment, control = got["by_arm"]["treatment"], got["by_arm"]["control"]
    # Six values each: the median is the 3rd; its interval runs from the 1st to the 6th.
    assert treatment["response_minutes"]["p50"] == 30.0 and treatment["response_minutes"]["p50_ci"] == [10.0, 60.0]
    assert control["response_minutes"]["p50"] == 180.0 and control["response_minutes"]["p50_ci"] == [60.0, 360.0]
    assert got["difference"]["response_minutes"]["p50"] == {"difference": -150.0, "ci": [-350.0, 0.0]}
    # All six of each arm within the 48 h target: Wilson 6/6.
    assert treatment["response_minutes"]["within_target_pct_ci"] == [61.0, 100.0]
    assert got["difference"]["response_minutes"]["within_target_pct"] == {"difference": 0.0, "ci": [-39.0, 39.0]}
    # Reviews: 3 of 6 in time in the treatment arm; none in the control arm.
    assert treatment["reviews"] == {"n": 6, "within_24h_pct": 50.0, "within_24h_pct_ci": [18.8, 81.2]}
    assert control["reviews"]["within_24h_pct_ci"] is None and got["difference"]["reviews"]["within_24h_pct"] is None
    assert treatment["incidents"]["created"] == 6 and control["incidents"]["created"] == 6
    bad = await sergeant.get("/api/kpis?by_arm=yes")
    assert bad.status == 400


async def test_a_demo_month_in_a_trial_has_two_arms_to_compare(tmp_path):
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    (data / "evr.toml").write_text("[trial]\nenabled = true\n")
    made = subprocess.run([sys.executable, "-m", "evr", "demo", "--days", "20", "--per-day", "10", "--data",
                           str(data)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    from evr.config import Settings
    from evr.db import make_engine, sessionmaker
    from evr.evaluation.kpis import Indicators, parse_period

    settings = Settings.load(data_dir=data, environ={})
    engine = make_engine(settings.db_url)
    try:
        async with sessionmaker(engine)() as db:
            got = await Indicators(settings.grade_targets_hours).by_arm(
                db, parse_period({}, datetime.now(timezone.utc), settings.timezone))
    finally:
        await engine.dispose()
    treatment, control = got["by_arm"]["treatment"], got["by_arm"]["control"]
    assert treatment["incidents"]["created"] > 50 and control["incidents"]["created"] > 50
    assert control["incidents"]["to_evr"] == 0 and control["incidents"]["rejected"] == 0
    # EVR answers faster than a visit in person, by far, in the made-up month as in the trials.
    assert got["difference"]["response_minutes"]["p50"]["ci"][1] < 0
