"""The victim's survey in a real Chromium on a phone (390 px): the questions one per
screen, in plain words, each skippable, the answers sent once at the end and kept;
no serious accessibility fault, no error. (The end screen's offer is in test_browser.py's
call, when police close it.)"""

from __future__ import annotations

from browser_fixtures import SQLITE_ONLY
from sqlalchemy import select

from evr.db import SurveyAnswer
from evr.http import DB

pytestmark = SQLITE_ONLY


async def test_the_survey_one_question_a_screen_on_a_phone(ui, staff, server):
    officer = await staff("olive", "officer")
    cid = (await officer.create())["id"]
    assert (await officer.post(f"/api/consultations/{cid}/close")).status == 200
    url = (await (await officer.post(f"/api/consultations/{cid}/survey")).json())["survey_url"]
    page = await ui.page(phone=True)
    await page.goto("/s/" + url.rsplit("/s/", 1)[1])
    assert await page.title() == "A few questions"  # neutral in the tab
    assert await page.get_by_role("link", name="Quick exit").is_visible()
    await ui.screen(page, "survey-1-intro")
    await page.get_by_role("button", name="Start").click()

    satisfied = page.get_by_role("group", name="Overall, how satisfied are you with how the police dealt with you?")
    assert await satisfied.is_visible() and await page.locator(".question:visible").count() == 1
    assert await page.get_by_role("status").text_content() == "Question 1 of 4"
    await page.get_by_label("Satisfied", exact=True).check()
    await ui.screen(page, "survey-2-question")
    await page.get_by_role("button", name="Next").click()
    await page.get_by_role("group", name="If you needed the police again").wait_for()
    await page.get_by_role("button", name="Skip this question").click()  # would_use_again skipped
    await page.get_by_label("Very safe", exact=True).check()
    await page.get_by_role("button", name="Back").click()  # back and forth keeps what was chosen
    await page.get_by_role("button", name="Next").click()
    assert await page.get_by_label("Very safe", exact=True).is_checked()
    await page.get_by_role("button", name="Next").click()
    await page.get_by_label("Quite a lot", exact=True).check()
    await page.get_by_role("button", name="Send").click()
    await page.get_by_role("heading", name="Thank you").wait_for()
    await ui.screen(page, "survey-3-thanks")
    async with server.app[DB]() as db:
        [row] = list(await db.scalars(select(SurveyAnswer)))
    assert (row.satisfied, row.would_use_again, row.felt_safe, row.confidence_in_police) == (4, None, 5, 4)
    # The link is spent: opening it again says so, kindly.
    await page.reload()
    assert "answered already" in await page.locator("main").text_content()

