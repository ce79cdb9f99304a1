"""The records console (/records) in a real Chromium against a real server: the due
list, an item's page, a review with the assessment criteria, a hold and its release,
disposal after a confirmation, the certificate, and the audit trail of it all.
No uncaught error or CSP violation is allowed, nor any serious accessibility fault."""

from __future__ import annotations

import re
from typing import Any

from axe_playwright_python.async_playwright import Axe
from browser_fixtures import ARTIFACTS, SQLITE_ONLY, TIMEOUT
from conftest import PASSWORD
from playwright.async_api import expect
from test_retention import add_item

from evr.http import STORE

pytestmark = SQLITE_ONLY


async def serious_violations(page: Any) -> list[str]:
    results = await Axe().run(page)
    return [f"{v['id']}: {v['help']}" for v in results.response["violations"]
            if v.get("impact") in ("serious", "critical")]


async def test_records_console(server, clock, staff, settings, browser):
    settings.session_ttl_hours = 24 * 365
    officer = await staff("olive", "officer")
    await staff("rita", "records")
    cid = (await officer.create())["id"]
    footage = await add_item(server, cid)
    evidential = await add_item(server, cid, classification="evidential")
    clock.advance(days=32)

    context = await browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # (the page asks /api/me first; signed out, that 401 is logged by the browser itself)
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and "status of 401" not in msg.text else None)
    base = str(server.make_url("/records"))
    await page.goto(base)
    await page.fill("#username", "rita")
    await page.fill("#password", PASSWORD)
    await page.click("#login-form button[type=submit]")

    # The due list: the non-evidential recording past its 31 days, nothing else.
    await page.wait_for_selector("#due-body tr")
    assert await page.locator("#due-body tr").count() == 1
    row = page.locator("#due-body tr").first
    assert "non_evidential" in await row.inner_text() and "dispose" in await row.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "records-due.png", full_page=True)
    assert await serious_violations(page) == []

    # An item: metadata, hashes, objects; a review with the criteria prompts.
    await row.get_by_role("button", name=re.compile("Open item")).click()
    await page.wait_for_selector("#item:not([hidden])")
    facts = await page.inner_text("#i-facts")
    assert footage["sha256"] in facts and footage["prefix"] in facts
    assert await page.locator("#i-objects li").count() == 2
    assert await page.locator("#criteria input[type=checkbox]").count() == 6
    await page.check("#criteria input[value=substance_misuse]")
    await page.check("#review-form input[value=retain]")
    await page.fill("#review-reason", "victim asked for a copy; keep while that is handled")
    await page.fill("#next-review", "2099-01-31")
    await page.click("#review-form button[type=submit]")
    await expect(page.locator("#i-reviews tr")).to_have_count(1)
    assert "substance_misuse" in await page.inner_text("#i-reviews")
    assert await page.is_disabled("#dispose-one")  # retained: not due any more

    # A review to dispose, a hold that blocks it, the release, then disposal after confirming.
    await page.check("#review-form input[value=dispose]")
    await page.fill("#review-reason", "copy given; no criteria apply")
    await page.click("#review-form button[type=submit]")
    await expect(page.locator("#i-reviews tr")).to_have_count(2)
    assert await page.is_enabled("#dispose-one")
    await page.fill("#hold-reason", "complaint received")
    await page.click("#hold-form button[value=hold]")
    await expect(page.locator("#i-holds tr")).to_have_count(1)
    assert await page.is_disabled("#dispose-one")
    await page.fill("#hold-reason", "complaint closed")
    await page.click("#hold-form button[value=release]")
    await expect(page.locator("#i-holds")).to_contain_text("complaint closed")
    await page.click("#dispose-one")
    await page.wait_for_selector("#confirm[open]")
    await page.screenshot(path=ARTIFACTS / "records-confirm.png")
    await page.click("#confirm button[value=ok]")
    await page.wait_for_selector("#i-cert:not([hidden])")
    certificate = await page.inner_text("#i-cert-body")
    assert footage["sha256"] in certificate and '"basis": "review"' in certificate
    assert await server.app[STORE].keys(footage["prefix"]) == []
    assert len(await server.app[STORE].keys(evidential["prefix"])) == 2
    trail = await page.inner_text("#i-audit")
    for action in ("retention.review", "retention.hold", "retention.release", "evidence.erase"):
        assert action in trail
    await page.screenshot(path=ARTIFACTS / "records-disposed.png", full_page=True)
    assert await serious_violations(page) == []

    # The certificates tab lists it.
    await page.click("[data-tab=certs]")
    await page.wait_for_selector("#certs-body tr")
    assert footage["sha256"] in await page.inner_text("#certs-body")
    await context.close()
    assert errors == []
