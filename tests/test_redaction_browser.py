"""The redaction editor in the officer's console, in Chromium (issue 16): after a real
call the officer opens a recording's editor, plays it, draws a box over the picture with
the mouse, marks a range to mute, sees the preview (the box blurred over the playing
picture, the sound off in the range), is told next to the field that a reason is
needed, runs the redaction with one, watches its progress to done, and the redacted
copy plays beside the original and is listed as a recording of its own. The job holds
what was drawn (the box in fractions of the picture, letterboxing left out) and the
original is unchanged. A second job is cancelled from the editor while it waits in the
queue (the test runs the redaction worker itself, once, for the first job only, so the
second stays queued until it is cancelled: nothing races), and a third that fails says
why.

Uses the browser fixtures of ``browser_fixtures.py`` (Debian's Chromium, fake camera,
screenshots and axe-core scans, no console error or CSP violation allowed).
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any

import pytest
from browser_fixtures import CAD, SQLITE_ONLY, UI, victim_joins
from conftest import PASSWORD, eventually

from evr.http import AUDIT, DB, REDACTIONS, SIGNING_KEY, STORE
from evr.recording.redactions import Redactor

pytestmark = SQLITE_ONLY

#: Where the officer drags, as fractions of the picture: from one corner to the other.
DRAG = ((0.2, 0.25), (0.6, 0.55))


@pytest.fixture
def settings(settings):
    settings.recording_segment_seconds = 2.0
    settings.redaction_workers = 0  # the test runs the worker when it wants a job run
    return settings


async def recordings_of(officer, cid: str) -> list[dict[str, Any]]:
    return (await (await officer.get(f"/api/consultations/{cid}/recordings")).json())["recordings"]


async def end_of(officer, base: str) -> float:
    """Where a recording ends on its own timeline: its end entry, from its start (what
    the server checks a range against, and so what the editor calls the end)."""
    recording = await (await officer.get(base)).json()
    [end] = [e for e in recording["entries"] if e["type"] == "end"]
    return (datetime.fromisoformat(end["at"]) - datetime.fromisoformat(recording["started_at"])).total_seconds()


async def expect_focused(locator) -> None:
    await locator.page.wait_for_function("e => document.activeElement === e", arg=await locator.element_handle())


def run_one_job(server, settings, clock) -> asyncio.Task:
    """The redaction worker, taking one queued job and running it to its end."""
    app = server.app
    worker = Redactor(settings, clock, app[DB], app[STORE], app[SIGNING_KEY], app[AUDIT], app[REDACTIONS], 1)
    return asyncio.create_task(worker.run(once=True))


#: Every text the job's status line shows, in order (the page's own status element).
WATCH_STATUS = """job => {
  window.__said = [];
  const status = job.querySelector('[role=status]');
  new MutationObserver(() => window.__said.push([status.textContent, job.querySelector('progress').position]))
    .observe(status, { childList: true, characterData: true, subtree: true });
}"""


async def recorded_call(ui: UI, staff) -> tuple[Any, Any, str]:
    """A call of a few seconds with the victim's camera, ended; returns the officer's
    API client, the console page (on the list) and the consultation's id."""
    officer = await staff("alice")
    created = await officer.create(cad_ref=CAD)
    desk = await ui.page(phone=False)
    await desk.goto("/console")
    await desk.get_by_label("Username").fill("alice")
    await desk.get_by_label("Password").fill(PASSWORD)
    await desk.get_by_role("button", name="Sign in").click()
    phone = await ui.page()
    await victim_joins(phone, created["join_url"])
    await desk.get_by_role("button", name=f"Join {CAD}").click()
    in_call = desk.locator("#call-recordings")
    await in_call.locator("li", has_text="Victim").filter(has_text="Recording now").wait_for()
    await asyncio.sleep(4)  # a recording long enough to mark ranges in
    await desk.get_by_role("button", name="Close link").click()
    await desk.locator("#confirm").get_by_role("button", name="Close link").click()
    await desk.get_by_text("This link is closed").wait_for()
    await desk.get_by_role("button", name="Back to list").click()
    await desk.locator("#v-home").wait_for()
    cid = created["id"]

    async def sealed():  # the recordings page reads the list once, when it opens
        listed = await recordings_of(officer, cid)
        return listed and all(r["manifest_sha256"] for r in listed)

    await eventually(sealed, what="every recording sealed")
    return officer, desk, cid


async def test_officer_redacts_a_recording_and_the_copy_plays_beside_it(ui: UI, staff, server, settings, clock):
    officer, desk, cid = await recorded_call(ui, staff)
    await desk.get_by_role("button", name=f"Recordings of {CAD}").click()
    page = desk.locator("#page-recordings")
    victim = page.locator("li", has_text=re.compile("^Victim from")).filter(has_text="Complete")
    await victim.wait_for()
    recordings = await recordings_of(officer, cid)
    original = next(r for r in recordings if r["participant"] == "victim" and r["track"] == "camera")
    base = f"/api/consultations/{cid}/recordings/{original['id']}"

    # The editor: the recording loads under an overlay to draw on.
    await victim.get_by_role("button", name="Redact…").click()
    editor = page.locator(".redaction-editor")
    await editor.get_by_role("heading", name=re.compile("^Redact: Victim")).wait_for()
    video = editor.locator("video.redact-video").first
    await desk.wait_for_function("v => v.videoWidth > 0 && v.readyState >= 2", arg=await video.element_handle())

    # With the keyboard: a box added, moved and sized with the arrow keys, then deleted.
    await editor.get_by_role("button", name="Add a box in the middle").click()
    placed = editor.get_by_role("group", name=re.compile("^Box 1: blur"))
    await expect_focused(placed)
    for key in ("ArrowRight", "ArrowRight", "Shift+ArrowDown"):
        await desk.keyboard.press(key)
    await editor.get_by_text("Box 1: 30% by 31% of the picture, 37% from the left and 35% from the top").wait_for()
    await desk.keyboard.press("Delete")
    await editor.get_by_text("No boxes yet.").wait_for()

    # Play a little, pause, and draw a box with the mouse from there to the end.
    await editor.get_by_role("button", name="Play", exact=True).click()
    await desk.wait_for_function("v => v.currentTime >= 0.4", arg=await video.element_handle())
    await editor.get_by_role("button", name="Pause", exact=True).click()
    at = await video.evaluate("v => v.currentTime")
    await video.scroll_into_view_if_needed()
    frame = await editor.locator(".redact-frame").bounding_box()
    (x0, y0), (x1, y1) = DRAG
    await desk.mouse.move(frame["x"] + x0 * frame["width"], frame["y"] + y0 * frame["height"])
    await desk.mouse.down()
    await desk.mouse.move(frame["x"] + (x0 + x1) / 2 * frame["width"], frame["y"] + y1 * frame["height"], steps=4)
    await desk.mouse.move(frame["x"] + x1 * frame["width"], frame["y"] + y1 * frame["height"], steps=4)
    await desk.mouse.up()
    await editor.get_by_text(re.compile("^Box 1: 40% by 30% of the picture")).wait_for()

    # A range to mute, from here for a second.
    await editor.get_by_role("button", name="Mute from here…").click()
    mute_to = round(at + 1.0, 1)
    await editor.get_by_label("Mute to (seconds)").fill(str(mute_to))
    await editor.get_by_role("button", name="Add the range to mute").click()
    await editor.get_by_text(re.compile("^Mute 1: ")).wait_for()
    await ui.screen(desk, "editor")

    # The preview: playing inside the box's span, the box is blurred over the picture,
    # and the sound is off inside the mute range, on again after it.
    await editor.get_by_role("button", name="Play", exact=True).click()
    await desk.wait_for_function(
        "e => !e.querySelector('video').paused && e.querySelector('.redact-box.is-active')"
        " && getComputedStyle(e.querySelector('.redact-box.is-active')).backdropFilter.includes('blur')",
        arg=await editor.element_handle())
    await desk.wait_for_function("([v, to]) => v.currentTime < to && v.muted",
                                 arg=[await video.element_handle(), mute_to])
    await desk.wait_for_function("([v, to]) => v.currentTime > to + 0.3 && !v.muted",
                                 arg=[await video.element_handle(), mute_to])
    await editor.get_by_role("button", name="Pause", exact=True).click()

    # No reason: said next to the field, and nothing is sent.
    await editor.get_by_role("button", name="Run redaction").click()
    reason = editor.get_by_label("Reason for the redaction (kept in the audit log)")
    await editor.get_by_text("Give the reason for this redaction").wait_for()
    assert await reason.get_attribute("aria-invalid") == "true"
    described = await reason.get_attribute("aria-describedby")
    assert "Give the reason" in await desk.locator(f"#{described}").inner_text()
    assert (await (await officer.get(f"{base}/redactions")).json())["redactions"] == []

    # With a reason: the job runs to done, and the copy plays beside the original.
    await reason.fill("Disclosure to the press: a bystander's face and a name")
    job = editor.locator(".redact-job")
    await job.evaluate(WATCH_STATUS)
    await editor.get_by_role("button", name="Run redaction").click()
    await job.get_by_role("status").filter(has_text=re.compile("^Queued")).wait_for()
    assert await job.get_by_role("button", name="Cancel the redaction").is_visible()
    runner = run_one_job(server, settings, clock)
    await job.get_by_role("status").filter(has_text=re.compile("^Done")).wait_for(timeout=45_000)
    assert await runner == 1
    said = await desk.evaluate("window.__said")
    assert said[0][0].startswith("Queued") and said[-1][0].startswith("Done") and said[-1][1] == 1
    positions = [p for text, p in said if text.startswith("Running")]
    assert positions == sorted(positions) and all(0 <= p <= 1 for p in positions)
    assert not await job.get_by_role("button", name="Cancel the redaction").is_visible()
    copy = editor.locator("video.redact-copy")
    await copy.wait_for()
    handle = await copy.element_handle()
    await desk.wait_for_function("v => v.readyState >= 2 && v.videoWidth > 0", arg=handle)
    if await copy.evaluate("v => v.paused"):  # autoplay refused: the officer presses play
        await editor.get_by_role("button", name="Play both from the start").click()
    start = await copy.evaluate("v => v.currentTime")
    await desk.wait_for_function("([v, t]) => v.currentTime > t + 0.3", arg=[handle, start])
    listed = page.locator("li", has_text=re.compile("^Redacted copy of Victim"))
    await listed.wait_for()
    await listed.get_by_text("1 range muted, 1 box blurred or masked").wait_for()
    assert not await listed.get_by_role("button", name=re.compile("^Mark")).is_visible()  # classed as its original
    await ui.screen(desk, "done")

    # What ran is what was drawn: the box in fractions of the picture, the mute range.
    done = (await (await officer.get(f"{base}/redactions")).json())["redactions"][0]
    assert done["status"] == "done" and done["recording_id"]
    ops = done["operations"]
    [box] = ops["blur"]
    x, y, w, h = box["box"]
    assert all(0 <= v <= 1 for v in (x, y, w, h)) and x + w <= 1.000001 and y + h <= 1.000001
    assert (x, y, w, h) == pytest.approx((x0, y0, x1 - x0, y1 - y0), abs=0.02)
    assert at - 0.1 <= box["from"] <= at and box["to"] == pytest.approx(await end_of(officer, base), abs=0.002)
    assert box["style"] == "blur"
    [mute] = ops["mute"]
    assert at - 0.1 <= mute["from"] <= at and mute["to"] == pytest.approx(mute_to)
    assert ops["blur_faces"] is False
    after = {r["id"]: r for r in await recordings_of(officer, cid)}
    assert after[original["id"]]["manifest_sha256"] == original["manifest_sha256"]
    assert after[done["recording_id"]]["kind"] == "redacted"
    assert after[done["recording_id"]]["source_recording"] == original["id"]

    # A second job, cancelled from the editor while it waits (no worker takes it).
    await editor.get_by_label(re.compile("Blur faces automatically")).check()
    await editor.get_by_role("button", name="Run redaction").click()
    await job.get_by_role("status").filter(has_text=re.compile("^(Queued|Running)")).wait_for()
    await job.get_by_role("button", name="Cancel the redaction").click()
    await job.get_by_role("status").filter(has_text=re.compile("^Cancelled")).wait_for()
    assert not await job.get_by_role("button", name="Cancel the redaction").is_visible()
    latest = (await (await officer.get(f"{base}/redactions")).json())["redactions"][0]
    assert latest["status"] == "cancelled" and latest["operations"]["blur_faces"] is True

    # A job that fails says why (here: a media process given too little memory to start).
    settings.redaction_memory_mb = 40
    await editor.get_by_role("button", name="Run redaction").click()
    await job.get_by_role("status").filter(has_text=re.compile("^Queued")).wait_for()
    assert await run_one_job(server, settings, clock) == 1
    await job.get_by_role("status").filter(has_text=re.compile("^Failed")).wait_for()
    failed = (await (await officer.get(f"{base}/redactions")).json())["redactions"][0]
    assert failed["status"] == "failed" and failed["error"]
    assert await job.get_by_role("alert").inner_text() == failed["error"]
