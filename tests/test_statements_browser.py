"""A statement in Chromium: the officer drafts and sends it in the console, the victim
reads the pages on a phone-sized page, draws a signature with the mouse and signs, the
console shows it signed, and the sealed PDF validates with ``evr statement verify``.

Uses the browser fixtures of ``browser_fixtures.py`` (Debian's Chromium, fake camera,
screenshots and axe-core scans, no console error or CSP violation allowed).
"""

from __future__ import annotations

import asyncio
import re

from browser_fixtures import CAD, SQLITE_ONLY, UI, victim_joins
from conftest import PASSWORD

from evr.cli import main as _evr
from evr.http import SETTINGS

pytestmark = SQLITE_ONLY

TEXT = ("On Friday 20 November 2026 at about 22:15 I was walking home along the High Street when a man "
        "I did not know pulled my bag from my shoulder and ran towards the station.")


async def console_call(ui: UI, users) -> tuple[object, str]:
    """The officer signed in, a consultation created; returns the page and the join link."""
    await users("alice")
    desk = await ui.page(phone=False)
    await desk.goto("/console")
    await desk.get_by_label("Username").fill("alice")
    await desk.get_by_label("Password").fill(PASSWORD)
    await desk.get_by_role("button", name="Sign in").click()
    form = desk.locator("#create-form")
    await form.get_by_label("CAD reference").fill(CAD)
    for question in ("over 18", "offender absent", "safe to talk", "consent"):
        await form.get_by_role("group", name=re.compile(question)).get_by_label("Yes").check()
    await form.get_by_label("Phone").fill("07700 900123")
    await form.get_by_role("button", name="Create and send link").click()
    await desk.locator("#created").wait_for()
    return desk, await desk.get_by_label(re.compile("Join link")).input_value()


async def test_officer_drafts_victim_draws_and_signs_pdf_verifies(ui, users, server, tmp_path):
    desk, join_url = await console_call(ui, users)
    phone = await ui.page()
    await victim_joins(phone, join_url)
    await desk.locator("#list-body tr", has_text=CAD).get_by_role("button", name=f"Join {CAD}").click()
    await desk.get_by_role("heading", name=f"Call {CAD}").wait_for()

    # The officer drafts: saved as they type.
    panel = desk.locator("#statement-draft")
    await panel.get_by_label("Witness name").fill("Jane Smith")
    await panel.get_by_role("group", name="Is the witness over 18?").get_by_label("Yes").check()
    await panel.get_by_label("Occupation").fill("Nurse")
    await panel.get_by_label("Statement", exact=True).fill(TEXT)
    await panel.get_by_label(re.compile("Other exhibit references")).fill("JS/1")
    await panel.get_by_label(re.compile("Contact details")).fill("07700 900123")
    await panel.get_by_label("Willing to attend court").select_option("yes")
    status = desk.locator("#md-status")
    await status.filter(has_text=re.compile(r"Draft \(version \d+")).wait_for()
    await panel.get_by_label("How was the witness identified?").fill("Name and date of birth confirmed on video")
    await ui.screen(desk, "console-statement-draft")
    await panel.get_by_role("button", name="Send to the victim to sign").click()
    await status.filter(has_text="waiting for the victim to sign").wait_for()

    # The victim reads it as it will be sealed: the declaration names the page count.
    statement = phone.locator("#statement")
    await statement.get_by_role("heading", name="Your statement").wait_for()
    sheets = statement.locator("article.sheet")
    assert await sheets.count() == 2  # one statement page and the rear page
    assert "Page 1 of 1" in await sheets.nth(0).text_content()
    assert "pulled my bag from my shoulder" in await sheets.nth(0).text_content()
    declaration = await statement.locator("#st-declaration").text_content()
    assert "consisting of 1 page each signed by me" in declaration
    await ui.screen(phone, "victim-statement-to-sign")

    # Signing without drawing is refused on the page; then a stroke with the mouse.
    sign = statement.get_by_role("button", name="Sign my statement")
    await statement.get_by_label("Your full name").fill("Jane Smith")
    await statement.get_by_label(re.compile("I have read all 1 page")).check()
    await sign.click()
    await statement.get_by_role("alert").filter(has_text="Sign in the box").wait_for()
    pad = statement.locator("canvas.sign-pad")
    await pad.scroll_into_view_if_needed()
    box = await pad.bounding_box()
    await phone.mouse.move(box["x"] + 20, box["y"] + box["height"] * 0.7)
    await phone.mouse.down()
    for i in range(1, 25):
        await phone.mouse.move(box["x"] + 20 + i * (box["width"] - 40) / 24,
                               box["y"] + box["height"] * (0.3 if i % 2 else 0.7), steps=2)
    await phone.mouse.up()
    await sign.click()
    await statement.get_by_text("You have signed your statement").wait_for()
    await ui.screen(phone, "victim-statement-signed")

    # The console sees it signed, live, and the sealed PDF validates.
    await status.filter(has_text="Signed and sealed").wait_for()
    await ui.screen(desk, "console-statement-signed")
    cid = (await (await desk.request.get("/api/consultations")).json())["consultations"][0]["id"]
    listed = await (await desk.request.get(f"/api/consultations/{cid}/statements")).json()
    sid = listed["statements"][0]["id"]
    download = await desk.request.get(f"/api/consultations/{cid}/statements/{sid}/pdf")
    assert download.status == 200
    pdf = tmp_path / "signed.pdf"
    pdf.write_bytes(await download.body())
    assert listed["statements"][0]["sha256"]
    data = str(server.app[SETTINGS].data_dir)
    assert await asyncio.to_thread(_evr, ["statement", "verify", str(pdf), "--data", data]) == 0
    changed = bytearray(pdf.read_bytes())
    changed[len(changed) // 2] ^= 1
    (tmp_path / "changed.pdf").write_bytes(bytes(changed))
    assert await asyncio.to_thread(_evr, ["statement", "verify", str(tmp_path / "changed.pdf"), "--data", data]) == 1
