"""The EVR queue's pages in a real Chromium against a real server: the call handler's
page (/incidents/new: the eligibility script, a No stopping it, the API's refusals
next to their fields), the sergeant's desk (/desk: triage arriving live, queue,
allocate to a signed-in officer, reject with a reason, reviews due overdue first,
a review with a plan) and the officers' queue board (/queue: oldest first, waiting
times, overdue in words, live pushes to two officers, take next, phoned, the call,
the investigation record). Every screen is scanned with axe-core (no serious or
critical violation), and no uncaught error or CSP violation is allowed
(``browser_fixtures.UI``)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from browser_fixtures import SQLITE_ONLY
from conftest import PASSWORD, eventually
from playwright.async_api import expect
from sqlalchemy import update
from test_incidents import INVESTIGATION, _incident, _json

from evr.db import Incident
from evr.http import DB

pytestmark = SQLITE_ONLY


# -- helpers -------------------------------------------------------------------


async def sign_in(page: Any, name: str) -> None:
    await page.get_by_label("Username").fill(name)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()


async def entered(handler: Any, cad: str, hours_ago: float, **extra: Any) -> dict[str, Any]:
    return await _json(await handler.post("/api/incidents", _incident(cad, hours_ago=hours_ago, **extra)), 201)


async def queued(handler: Any, sergeant: Any, cad: str, hours_ago: float, **extra: Any) -> dict[str, Any]:
    made = await entered(handler, cad, hours_ago, **extra)
    await _json(await sergeant.post(f"/api/incidents/{made['id']}/triage", {"decision": "queue"}), 200)
    return made


async def incident(who: Any, iid: str) -> dict[str, Any]:
    return await _json(await who.get(f"/api/incidents/{iid}"), 200)


async def submitted(handler: Any, sergeant: Any, officer: Any, cad: str, hours_ago: float) -> dict[str, Any]:
    """An incident taken, called and closed, its investigation record submitted: due for review."""
    made = await queued(handler, sergeant, cad, hours_ago)
    taken = await _json(await officer.post("/api/queue/take"), 200)
    assert taken["id"] == made["id"]
    call = await _json(await officer.post(f"/api/incidents/{made['id']}/consultation"), 201)
    assert (await officer.post(f"/api/consultations/{call['id']}/close")).status == 200
    await eventually(lambda: incident(sergeant, made["id"]), lambda i: i["call_closed_at"] is not None,
                     what=f"the close of {cad}'s call on the incident")
    await _json(await officer.post(f"/api/incidents/{made['id']}/investigation", INVESTIGATION), 200)
    return made


async def call_closed(server: Any, iid: str, hours_ago: float) -> None:
    """Move when the incident's call closed (its review is due 24 h after)."""
    at = datetime.now(timezone.utc) - timedelta(hours=hours_ago)
    async with server.app[DB]() as db:
        await db.execute(update(Incident).where(Incident.id == iid).values(call_closed_at=at))
        await db.commit()


def row_of(page: Any, body: str, cad: str) -> Any:
    return page.locator(f"#{body} tr", has_text=cad)


async def cads(page: Any, body: str) -> list[str]:
    return [text.strip() for text in await page.locator(f"#{body} tr td:first-child").all_text_contents()]


async def mark(page: Any) -> None:
    """Mark the page: a reload would lose the mark."""
    await page.evaluate("window.__notReloaded = true")


async def not_reloaded(page: Any) -> None:
    assert await page.evaluate("window.__notReloaded === true"), "the page was reloaded"


# -- the call handler's page -------------------------------------------------------


async def test_call_handler_page(ui, users, staff):
    """The script read out word for word; a No stops it with what to do instead and enters
    nothing; every Yes, and the incident goes to triage; refusals next to their field."""
    await users("carl", "call_handler")
    sergeant = await staff("sue", "sergeant")
    page = await ui.page(phone=False)
    await page.goto("/incidents/new")
    assert await page.title() == "EVR: new incident"
    await sign_in(page, "carl")
    await page.get_by_role("heading", name="New incident for a video response").wait_for()

    # Each question in the words read out; until every one is answered, no incident form.
    script = page.locator("#questions")
    questions = {
        "adult": script.get_by_role("group", name=re.compile("18 or over")),
        "offender": script.get_by_role("group", name=re.compile("person who did this")),
        "safe": script.get_by_role("group", name=re.compile("somewhere safe")),
        "device": script.get_by_role("group", name=re.compile("smartphone with a camera")),
        "consent": script.get_by_role("group", name=re.compile("happy to have a video call")),
    }
    assert "The call is recorded" in await questions["consent"].text_content()
    assert await page.locator("#details").is_hidden()
    await ui.screen(page, "new-1-script")

    # A No stops it, with what to do instead; nothing can be entered.
    for group in questions.values():
        await group.get_by_label("Yes").check()
    await questions["offender"].get_by_label("No").check()
    stop = page.get_by_role("alert").filter(has_text="Stop")
    await stop.wait_for()
    assert "offender is present" in await stop.text_content()
    assert "deploy officers per force policy" in await stop.text_content()
    assert await page.locator("#details").is_hidden()
    assert not await page.get_by_role("button", name="Enter the incident").is_visible()
    await ui.screen(page, "new-2-stopped")
    assert (await _json(await sergeant.get("/api/incidents"), 200))["incidents"] == []

    # Every answer Yes: the incident's details, refusals shown next to their field.
    await questions["offender"].get_by_label("Yes").check()
    await expect(page.locator("#stop")).to_be_empty()
    await page.locator("#details").wait_for()
    await page.get_by_label("CAD reference").fill("CAD-2026-000900")
    await page.get_by_label("Grade").select_option("3")
    await page.get_by_label("Category").fill("burglary")
    await page.get_by_label(re.compile("What happened")).fill("Shed broken into overnight, bicycle taken.")
    await page.get_by_label("Victim's name").fill("Sam Victim")
    await page.get_by_label("Mobile phone").fill("12")
    await page.get_by_label("The victim is vulnerable").check()
    await page.get_by_role("button", name="Enter the incident").click()
    await expect(page.locator("[id='e-victim.phone']")).to_contain_text("victim.phone is not valid")
    assert await page.get_by_label("Mobile phone").get_attribute("aria-invalid") == "true"
    await expect(page.locator("#create-error")).to_contain_text("not valid")
    await page.get_by_label("Mobile phone").fill("07700 900123")
    await page.get_by_role("button", name="Enter the incident").click()
    await expect(page.locator("#created")).to_contain_text("CAD-2026-000900 entered")
    await expect(row_of(page, "mine-body", "CAD-2026-000900")).to_contain_text("Awaiting triage")
    await ui.screen(page, "new-3-entered")

    [made] = (await _json(await sergeant.get("/api/incidents"), 200))["incidents"]
    full = await incident(sergeant, made["id"])
    assert full["state"] == "triage" and full["cad_ref"] == "CAD-2026-000900" and full["grade"] == 3
    assert full["vulnerability"] is True and full["high_harm"] is False
    assert full["victim"]["phone"] == "07700 900123" and full["victim"]["preferred_contact"] == "sms"
    assert all(full["eligibility"].values()) and full["created_by"] == "carl"

    # The form starts again at the script; the same CAD reference again: 409 at its field.
    assert await page.locator("#details").is_hidden()
    for group in questions.values():
        await group.get_by_label("Yes").check()
    await page.get_by_label("CAD reference").fill("CAD-2026-000900")
    await page.get_by_label("Mobile phone").fill("07700 900123")
    await page.get_by_role("button", name="Enter the incident").click()
    await expect(page.locator("#e-cad_ref")).to_contain_text("open already")
    await expect(page.get_by_role("alert").filter(has_text="open already")).to_have_count(1)
    await ui.screen(page, "new-4-duplicate")
    assert len((await _json(await sergeant.get("/api/incidents"), 200))["incidents"]) == 1


# -- the sergeant's desk --------------------------------------------------------------


async def test_sergeants_desk(ui, users, staff, server):
    """Triage arriving live; queue, allocate to a signed-in officer, reject with a reason;
    reviews due overdue first with the time left; a review with a plan."""
    handler = await staff("carl", "call_handler")
    officer = await staff("olive", "officer")  # signed in (a session)
    await users("bob", "officer")  # never signed in
    await users("sue", "sergeant")
    api_sergeant = await staff("sian", "sergeant")

    # Two investigations due for review: the earlier report's call closed 25 h ago
    # (overdue by 1 h), the later's 2 h ago (due in 22 h).
    late = await submitted(handler, api_sergeant, officer, "CAD-REVIEW-1", hours_ago=30)
    soon = await submitted(handler, api_sergeant, officer, "CAD-REVIEW-2", hours_ago=4)
    await call_closed(server, late["id"], hours_ago=25)
    await call_closed(server, soon["id"], hours_ago=2)
    first = await entered(handler, "CAD-TRIAGE-1", hours_ago=3)

    page = await ui.page(phone=False)
    await page.goto("/desk")
    assert await page.title() == "EVR sergeant's desk"
    await sign_in(page, "sue")
    await page.get_by_role("heading", name="Sergeant's desk").wait_for()
    await expect(page.locator("#live")).to_contain_text("Live")
    await row_of(page, "triage-body", "CAD-TRIAGE-1").wait_for()
    await mark(page)

    # New incidents arrive while the desk is open, without a reload.
    second = await entered(handler, "CAD-TRIAGE-2", hours_ago=2, high_harm=True)
    third = await entered(handler, "CAD-TRIAGE-3", hours_ago=1)
    await expect(page.locator("#triage-body tr")).to_have_count(3)
    assert await cads(page, "triage-body") == ["CAD-TRIAGE-1", "CAD-TRIAGE-2", "CAD-TRIAGE-3"]
    await expect(row_of(page, "triage-body", "CAD-TRIAGE-2")).to_contain_text("High harm")
    await not_reloaded(page)

    # Reviews due: the overdue one first, each with its time left.
    await expect(page.locator("#reviews-body tr")).to_have_count(2)
    assert await cads(page, "reviews-body") == ["CAD-REVIEW-1", "CAD-REVIEW-2"]
    await expect(row_of(page, "reviews-body", "CAD-REVIEW-1")).to_contain_text(re.compile(r"Overdue by (59 min|1 h)"))
    await expect(row_of(page, "reviews-body", "CAD-REVIEW-2")).to_contain_text(re.compile(r"Due in 2[12] h"))
    await ui.screen(page, "desk-1-lists")

    # Queue the first.
    await page.get_by_role("button", name="Triage CAD-TRIAGE-1").click()
    await page.get_by_label("Queue it").check()
    await page.get_by_role("button", name="Record the decision").click()
    await expect(page.locator("#desk-status")).to_contain_text("CAD-TRIAGE-1 is queued")
    await expect(row_of(page, "queue-body", "CAD-TRIAGE-1")).to_contain_text("Queued")
    assert (await incident(api_sergeant, first["id"]))["state"] == "queued"

    # Allocate the second to an officer signed in: only those are offered.
    await page.get_by_role("button", name="Triage CAD-TRIAGE-2").click()
    await page.get_by_label("Allocate to an officer").check()
    picker = page.get_by_label("Officer (to allocate)")
    await expect(picker.locator("option[value=olive]")).to_be_enabled()
    await expect(picker.locator("option[value=bob]")).to_be_disabled()
    await ui.screen(page, "desk-2-allocate")
    await picker.select_option("olive")
    await page.get_by_role("button", name="Record the decision").click()
    await expect(page.locator("#desk-status")).to_contain_text("CAD-TRIAGE-2 is allocated to olive")
    await expect(row_of(page, "queue-body", "CAD-TRIAGE-2")).to_contain_text("Allocated to olive")
    allocated = await incident(api_sergeant, second["id"])
    assert allocated["state"] == "allocated" and allocated["allocated_to"] == "olive"

    # Reject the third: a reason is required.
    await page.get_by_role("button", name="Triage CAD-TRIAGE-3").click()
    await page.get_by_role("radio", name="Reject").check()
    await page.get_by_role("button", name="Record the decision").click()
    await expect(page.locator("#t-error")).to_contain_text("needs a reason")
    await page.get_by_label(re.compile("Reason \\(required to reject\\)")).fill("Offender lives at the address")
    await page.get_by_role("button", name="Record the decision").click()
    await expect(page.locator("#desk-status")).to_contain_text("CAD-TRIAGE-3 is rejected")
    await expect(page.locator("#triage-body tr")).to_have_count(0)
    rejected = await incident(api_sergeant, third["id"])
    assert rejected["state"] == "rejected" and rejected["timeline"][-1]["reason"] == "Offender lives at the address"

    # Review the overdue one: the officer's record shown; back to the officer with a plan.
    await page.get_by_role("button", name="Review CAD-REVIEW-1").click()
    record = page.locator("#rv-record")
    await expect(record).to_contain_text(INVESTIGATION["summary"])
    await expect(record).to_contain_text("CCTV at number 12")
    await expect(record).to_contain_text("Risk: standard")
    await page.get_by_label("Back to the EVR officer for desk enquiries").check()
    await page.get_by_role("button", name="Record the review").click()
    await expect(page.locator("#e-investigation_plan")).to_contain_text("investigation plan")
    await ui.screen(page, "desk-3-review")
    await page.get_by_label(re.compile("Investigation plan")).fill("Obtain the CCTV from number 12.")
    await page.get_by_role("button", name="Record the review").click()
    await expect(page.locator("#desk-status")).to_contain_text("Review of CAD-REVIEW-1 recorded")
    await expect(page.locator("#reviews-body tr")).to_have_count(1)
    assert await cads(page, "reviews-body") == ["CAD-REVIEW-2"]
    reviewed = await incident(api_sergeant, late["id"])
    assert reviewed["state"] == "evr_desk_enquiries" and reviewed["review_overdue"] is True
    assert reviewed["review"]["investigation_plan"] == "Obtain the CCTV from number 12."
    assert reviewed["review"]["reviewer"] == "sue"
    await not_reloaded(page)
    await ui.screen(page, "desk-4-done")


# -- the officers' queue board ------------------------------------------------------


async def test_queue_board(ui, users, staff):
    """Oldest first with waiting times, overdue in words; live on two officers' boards;
    take next, phoned, the video call in the console, the investigation record."""
    handler = await staff("carl", "call_handler")
    sergeant = await staff("sue", "sergeant")
    await users("olive", "officer")
    await users("bob", "officer")
    older = await queued(handler, sergeant, "CAD-Q-1", hours_ago=5)
    overdue = await queued(handler, sergeant, "CAD-Q-2", hours_ago=2, grade=2)  # grade 2: within 1 h

    olive = await ui.page(phone=False)
    await olive.goto("/queue")
    assert await olive.title() == "EVR queue"
    await sign_in(olive, "olive")
    await olive.get_by_role("heading", name="Queue", exact=True).wait_for()
    await expect(olive.locator("#queue-body tr")).to_have_count(2)
    assert await cads(olive, "queue-body") == ["CAD-Q-1", "CAD-Q-2"]  # oldest report first
    await expect(row_of(olive, "queue-body", "CAD-Q-1")).to_contain_text(re.compile(r"(4 h 59 min|5 h)"))
    await expect(row_of(olive, "queue-body", "CAD-Q-1")).to_contain_text("Within target")
    late = row_of(olive, "queue-body", "CAD-Q-2")
    await expect(late.locator(".overdue")).to_have_text("Overdue")  # in words, not only in red
    assert "Overdue" not in await row_of(olive, "queue-body", "CAD-Q-1").text_content()
    await ui.screen(olive, "queue-1-board")

    bob = await ui.page(phone=False)
    await bob.goto("/queue")
    await sign_in(bob, "bob")
    await expect(bob.locator("#queue-body tr")).to_have_count(2)
    for page in (olive, bob):
        await mark(page)

    # A new incident queued while both boards are open: on both, without a reload.
    oldest = await queued(handler, sergeant, "CAD-Q-0", hours_ago=8)
    for page in (olive, bob):
        await expect(page.locator("#queue-body tr")).to_have_count(3)
        assert await cads(page, "queue-body") == ["CAD-Q-0", "CAD-Q-1", "CAD-Q-2"]

    # Olive takes next: the oldest, dispatched to her; it leaves Bob's board at once.
    await olive.get_by_role("button", name="Take next").click()
    await expect(olive.locator("#take-status")).to_contain_text("You took CAD-Q-0")
    await expect(bob.locator("#queue-body tr")).to_have_count(2)
    assert await cads(bob, "queue-body") == ["CAD-Q-1", "CAD-Q-2"]
    mine = row_of(olive, "mine-body", "CAD-Q-0")
    await expect(mine).to_contain_text("Dispatched")
    assert (await incident(sergeant, oldest["id"]))["dispatched_to"] == "olive"
    for page in (olive, bob):
        await not_reloaded(page)

    # Phoned the victim.
    await olive.get_by_role("button", name="Phoned the victim of CAD-Q-0").click()
    await expect(olive.locator("#mine-status")).to_contain_text("phone call to the victim of CAD-Q-0 is recorded")
    assert (await incident(sergeant, oldest["id"]))["phoned_at"] is not None
    await ui.screen(olive, "queue-2-mine")

    # Start the video call: the link (not sent automatically here), then the console's call.
    await olive.get_by_role("button", name="Start the video call for CAD-Q-0").click()
    await expect(olive.locator("#call-link-how")).to_contain_text("not sent automatically")
    assert "/j/" in await olive.get_by_label("Join link").input_value()
    await ui.screen(olive, "queue-3-link")
    await olive.get_by_role("button", name="Join the call").click()
    await olive.locator("#v-call").wait_for()
    await expect(olive.locator("#call-ref")).to_have_text("CAD-Q-0")
    await ui.screen(olive, "queue-4-console-call")
    await eventually(lambda: incident(sergeant, oldest["id"]), lambda i: i["arrived_at"] is not None,
                     what="the officer's arrival on the incident")
    await olive.get_by_role("button", name="Close link").click()
    await olive.locator("#confirm button[value=close]").click()
    await expect(olive.locator("#call-status")).to_have_text("closed")

    # Back on the board: the investigation record, submitted for review.
    await olive.goto("/queue")
    mine = row_of(olive, "mine-body", "CAD-Q-0")
    await expect(mine).to_contain_text("Call closed")
    await expect(mine.get_by_role("button", name=re.compile("Rejoin"))).to_have_count(0)
    await olive.get_by_role("button", name="Submit the investigation record for CAD-Q-0").click()
    form = olive.locator("#record-form")
    await form.get_by_role("button", name="Submit for review").click()
    await expect(olive.locator("#r-summary-error")).to_contain_text("Enter the summary")
    await form.get_by_label("Summary of the investigation").fill("Bicycle taken from the shed.")
    await form.get_by_label("Offence").fill("Burglary (non-dwelling)")
    await form.get_by_label("Lines of enquiry (one a line)").fill("CCTV at number 12\nDoor-to-door")
    await form.get_by_label("Safeguarding risk").select_option("medium")
    await ui.screen(olive, "queue-5-record")
    await form.get_by_role("button", name="Submit for review").click()
    await expect(olive.locator("#mine-status")).to_contain_text("CAD-Q-0 is submitted")
    await expect(olive.locator("#mine-body tr")).to_have_count(0)
    done = await incident(sergeant, oldest["id"])
    assert done["state"] == "awaiting_review"
    assert done["investigation"]["lines_of_enquiry"] == ["CCTV at number 12", "Door-to-door"]
    assert done["investigation"]["safeguarding"]["risk"] == "medium"
    assert older["id"] != overdue["id"]
