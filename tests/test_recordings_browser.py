"""Recordings in the officer's console, in Chromium: the indicator and the live list in
the call; after the call the consultation's page plays a recording, marks it
evidential with a reason, and exports it; the export verifies with ``evr recording verify``.

Uses the browser fixtures of ``browser_fixtures.py`` (screenshots and axe-core scans, no
page error or CSP violation allowed).
"""

from __future__ import annotations

import asyncio
import re

import pytest
from browser_fixtures import CAD, SQLITE_ONLY, UI, assert_playing, victim_joins
from conftest import PASSWORD

from evr.cli import main as _evr

pytestmark = SQLITE_ONLY


@pytest.fixture
def settings(settings):
    settings.recording_segment_seconds = 2.0
    return settings


async def test_console_lists_plays_classifies_and_exports_recordings(ui: UI, staff, tmp_path):
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

    # In the call: the indicator, and each participant's recording listed as it runs.
    await desk.locator("#rec").wait_for(state="visible")
    in_call = desk.locator("#call-recordings")
    await in_call.locator("li", has_text="Victim").filter(has_text="Recording now").wait_for()
    await in_call.locator("li", has_text="Officer").wait_for()
    await ui.screen(desk, "console-recordings-in-call")
    await asyncio.sleep(3)
    await desk.get_by_role("button", name="Close link").click()
    await desk.locator("#confirm").get_by_role("button", name="Close link").click()
    await desk.get_by_text("This link is closed").wait_for()  # the close went through
    await desk.get_by_role("button", name="Back to list").click()
    await desk.locator("#v-home").wait_for()

    # The consultation's page, from the list.
    await desk.get_by_role("button", name=f"Recordings of {CAD}").click()
    page = desk.locator("#page-recordings")
    victim = page.locator("li", has_text="Victim")
    await victim.filter(has_text="Complete").wait_for()
    await victim.get_by_role("button", name="Play").click()
    await assert_playing(desk, "#page-recordings video", frames_more=20)
    await ui.screen(desk, "console-recordings-page")

    await victim.get_by_role("button", name="Mark evidential…").click()
    await victim.get_by_label(re.compile("Why?")).fill("Shows the injuries")
    await victim.get_by_role("button", name="Save").click()
    await victim.get_by_role("status").filter(has_text="Marked evidential").wait_for()
    await victim.get_by_text("Evidential", exact=True).wait_for()

    await victim.get_by_role("button", name="Export…").click()
    await victim.get_by_label(re.compile("Reason for the export")).fill("Disclosure to CPS")
    async with desk.expect_download() as download_info:
        await victim.get_by_role("button", name="Download export").click()
    download = await download_info.value
    archive = tmp_path / "export.zip"
    await download.save_as(archive)
    assert await asyncio.to_thread(_evr, ["recording", "verify", str(archive)]) == 0
