"""The victim's page in a real Chromium (fake camera and microphone) against the bridge.

Chromium is Debian's (``.ci/run`` installs it); ``EVR_CHROMIUM`` points elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from conftest import link_path
from evr.client import CallClient

CHROMIUM = os.environ.get("EVR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]


@pytest.fixture
async def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium (see .ci/run)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        await browser.close()


@pytest.fixture(params=["sqlite"])
def db_url(request, tmp_path):
    """One database is enough here: the browser is what this file tests."""
    return f"sqlite+aiosqlite:///{tmp_path / 'evr.sqlite3'}"


async def test_chromium_victim_and_aiortc_officer_see_each_other(staff, browser):
    officer = await staff()
    created = await officer.create()
    console = CallClient(officer.client.session, officer.ws_url(created["id"]))
    await console.join()
    context = await browser.new_context(viewport={"width": 390, "height": 844},
                                        permissions=["camera", "microphone"])
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        url = str(officer.client.make_url(link_path(created["join_url"])))
        response = await page.goto(url)
        assert response.status == 200 and await page.title() == "Video appointment"
        await page.get_by_role("button", name="Check camera and microphone").click()
        await page.get_by_role("button", name="Join").click()
        # The officer receives the browser's camera through the bridge...
        await console.wait_media(audio=50, video=30, timeout=20)
        # ...and the browser plays the officer's video, frames advancing.
        remote = page.locator("video#remote")
        await remote.evaluate("v => new Promise(r => v.videoWidth > 0 ? r() : v.addEventListener('resize', r))")
        assert await remote.evaluate("v => v.videoWidth") == 320
        before = await remote.evaluate("v => v.getVideoPlaybackQuality().totalVideoFrames")
        await asyncio.sleep(1.0)
        assert await remote.evaluate("v => v.getVideoPlaybackQuality().totalVideoFrames") > before
        detail = await officer.consultation(created["id"])
        assert detail["status"] == "live"
        # Police close it: the page says so.
        await officer.post(f"/api/consultations/{created['id']}/close")
        await page.get_by_text("This appointment has ended").wait_for(timeout=5000)
        assert errors == []
    finally:
        await context.close()
        await console.leave()
