"""More than two in a call, in a real Chromium against a real server: the victim's
phone-sized page with an officer (the console, in Chromium) and an interpreter (an
aiortc client on a guest's link) sees and hears both, each on a tile with their name
and role; the console invites the guest and ends their link while the call goes on;
chat both ways; a screen shared from the console reaches the victim's page as a tile
of its own; the victim's location, shared with consent, reaches the console with a
link to a map; and the page's tiles fit a 320 px and a 390 px phone without
scrolling sideways. Every screen is scanned with axe-core and no uncaught error or
CSP violation is allowed (``browser_fixtures.UI``).
"""

from __future__ import annotations

import re
from typing import Any, AsyncIterator

import pytest
from browser_fixtures import CAD, SQLITE_ONLY, TIMEOUT, victim_joins
from conftest import PASSWORD, eventually

from evr.client import CallClient, claim_link

pytestmark = SQLITE_ONLY

# The tiles a page shows now: caption, picture size, frames shown, audio tracks.
TILES = """() => [...document.querySelectorAll('#stage figure.tile')].filter((f) => !f.hidden).map((f) => {
  const v = f.querySelector('video');
  const c = f.querySelector('figcaption');
  return {
    caption: c && !c.hidden ? c.textContent : '',
    screen: f.classList.contains('tile-screen'),
    width: v.videoWidth,
    frames: v.getVideoPlaybackQuality().totalVideoFrames,
    audio: v.srcObject ? v.srcObject.getAudioTracks().length : 0,
  };
})"""

# Whether anything on the page sticks out sideways (the page would scroll).
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const out = [...document.querySelectorAll('#s-call *')].filter((e) => {
    const r = e.getBoundingClientRect();
    return r.width && (r.right > width + 1 || r.left < -1);
  }).map((e) => e.id || e.className || e.tagName);
  return { scroll: document.documentElement.scrollWidth > width, out };
}"""

LAT, LON, ACCURACY = 50.7184, -1.8806, 25  # Bournemouth

# -- helpers -------------------------------------------------------------------


def role_of(caption: str) -> str:
    """The role a tile's caption names: "Ana Silva (Interpreter)", "Officer"."""
    return caption.rsplit("(", 1)[-1].removesuffix(")").removeprefix("Screen shared by ")


async def tiles(page: Any) -> list[dict[str, Any]]:
    return await page.evaluate(TILES)


async def tiles_playing(page: Any, predicate: Any, what: str) -> list[dict[str, Any]]:
    """Wait until the page's tiles satisfy ``predicate`` and every one of them shows
    moving pictures (its frames advance by 10)."""
    await page.wait_for_function(f"(() => {{ const t = ({TILES})(); return ({predicate})(t); }})", timeout=TIMEOUT)
    before = await tiles(page)
    await page.wait_for_function(
        f"""(before) => {{
          const now = ({TILES})();
          return now.length === before.length && now.every((t, i) => t.width > 0 && t.frames >= before[i].frames + 10);
        }}""", arg=before, timeout=TIMEOUT)
    shown = await tiles(page)
    assert shown, what
    return shown


async def console_call(ui: Any, cid: str) -> Any:
    """The officer's console in Chromium, signed in, in the call ``cid``."""
    desk = await ui.page(phone=False)
    await desk.goto(f"/console#c={cid}")
    await desk.get_by_label("Username").fill("alice")
    await desk.get_by_label("Password").fill(PASSWORD)
    await desk.get_by_role("button", name="Sign in").click()
    await desk.get_by_role("heading", name=f"Call {CAD}").wait_for()
    return desk


async def fits(page: Any, width: int, name: str, ui: Any) -> None:
    """At ``width`` px the page shows every tile without scrolling sideways."""
    await page.set_viewport_size({"width": width, "height": 640 if width < 390 else 844})
    await page.wait_for_timeout(300)  # layout settles
    overflow = await page.evaluate(OVERFLOW)
    assert not overflow["scroll"] and not overflow["out"], overflow
    for tile in await page.locator("#stage figure.tile:visible").all():
        box = await tile.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width + 1, (width, box)
    await ui.screen(page, name)


@pytest.fixture
async def guests(new_client: Any) -> AsyncIterator[Any]:
    """aiortc clients on guests' links (each its own device); they leave at teardown."""
    made: list[CallClient] = []

    async def join(join_url: str) -> CallClient:
        http = await new_client()
        assert await claim_link(http.session, join_url) == 200
        client = CallClient(http.session, join_url.replace("http", "ws", 1) + "/ws")
        made.append(client)
        await client.join()
        return client

    yield join
    for client in made:
        await client.leave()


# -- the tests -------------------------------------------------------------------


async def test_victim_officer_and_interpreter_see_each_other_chat_and_the_guest_leaves(ui, staff, guests):
    officer = await staff()
    created = await officer.create(cad_ref=CAD)
    desk = await console_call(ui, created["id"])
    phone = await ui.page()
    await victim_joins(phone, created["join_url"])
    await phone.locator("#status", has_text="Connected to the officer").wait_for()

    # The officer invites an interpreter, with a link to copy (nothing sent).
    guest_form = desk.locator("#guest-form")
    await guest_form.get_by_label("Role").select_option(label="Interpreter")
    await guest_form.get_by_label("Name").fill("Ana Silva")
    await guest_form.get_by_label(re.compile("Language")).fill("Polish")
    await guest_form.get_by_label("Copying it myself").check()
    await guest_form.get_by_role("button", name="Invite guest").click()
    await desk.locator("#guest-created").wait_for()
    guest_url = await desk.get_by_label(re.compile("Guest's join link")).input_value()
    assert "/j/" in guest_url
    assert "No message was sent" in await desk.locator("#guest-created").text_content()
    listed = desk.locator("#guest-list li", has_text="Ana Silva (Interpreter)")
    await listed.filter(has_text="invited").wait_for()
    await ui.screen(desk, "console-guest-invited")

    # The guest's page (opening it binds nothing) says who they join as, that the call
    # is recorded, and has no quick exit (an interpreter joins from work).
    look = await ui.page()
    response = await look.goto(guest_url)
    assert response.status == 200
    await look.get_by_role("heading", name="Join a police video call as the interpreter").wait_for()
    intro = await look.locator("#s-intro").text_content()
    assert "You are joining as: Interpreter" in intro and "recorded" in intro
    assert await look.get_by_role("link", name="Quick exit").count() == 0
    await ui.screen(look, "guest-intro")
    await look.context.close()

    # The interpreter joins (aiortc): the victim sees and hears both others, named.
    interpreter = await guests(guest_url)
    shown = await tiles_playing(phone, "(t) => t.filter((x) => !x.screen && x.width > 0).length === 2",
                                "the victim's page shows the officer and the interpreter")
    assert sorted(role_of(t["caption"]) for t in shown) == ["Interpreter", "Officer"], shown
    assert "Ana Silva (Interpreter)" in [t["caption"] for t in shown]
    assert all(t["audio"] == 1 for t in shown)
    await listed.filter(has_text="in the call now").wait_for()
    shown = await tiles_playing(desk, "(t) => t.filter((x) => !x.screen && x.width > 0).length === 2",
                                "the console shows the victim and the interpreter")
    assert sorted(role_of(t["caption"]) for t in shown) == ["Interpreter", "Victim"], shown
    await interpreter.wait_media(audio=50, video=20, timeout=TIMEOUT / 1000)
    await ui.screen(phone, "victim-three-way")
    await ui.screen(desk, "console-three-way")

    # Chat: the victim spells a name; the officer and the interpreter get it.
    await phone.get_by_role("button", name=re.compile("^Messages")).click()
    box = phone.get_by_label("Write a message")
    await box.fill("Smythe: S M Y T H E <b>not bold</b>")
    await phone.locator("#s-call .chat-count", has_text="35 of 2000 characters").wait_for()
    await phone.get_by_role("button", name="Send", exact=True).click()
    sent = desk.locator("#console-chat .chat-msg", has_text="S M Y T H E")
    await sent.wait_for()
    assert re.search(r"Victim\)? \d\d:\d\d", await sent.locator(".chat-meta").text_content())
    assert "<b>not bold</b>" in await sent.locator(".chat-text").text_content()
    assert await desk.locator("#console-chat .chat-text b").count() == 0
    await eventually(lambda: any(m.get("type") == "chat" and "S M Y T H E" in m["text"] for m in interpreter.messages),
                     timeout=TIMEOUT / 1000, what="the chat message at the interpreter's client")

    # The officer answers while the victim's panel is closed: the button says so.
    await phone.get_by_role("button", name=re.compile("^Messages")).click()
    assert await box.is_hidden()
    await desk.get_by_label("Write a message").fill("Thank you. Your reference is 12/3456.")
    await desk.get_by_role("button", name="Send", exact=True).click()
    toggle = phone.get_by_role("button", name=re.compile(r"Messages \(1 new\)"))
    await toggle.wait_for()
    await ui.screen(phone, "victim-chat-new")
    await toggle.click()
    answer = phone.locator("#s-call .chat-msg", has_text="12/3456")
    await answer.wait_for()
    assert "Officer" in await answer.locator(".chat-meta").text_content()
    # At most 2,000 characters, counted where they are typed.
    await box.fill("x" * 2100)
    await phone.locator("#s-call .chat-count", has_text="2000 of 2000 characters").wait_for()
    await box.fill("")
    await ui.screen(phone, "victim-chat")

    # Three tiles and the chat fit a 320 px and a 390 px phone.
    await fits(phone, 320, "victim-320", ui)
    await fits(phone, 390, "victim-390", ui)

    # The officer ends the interpreter's link: the call goes on, the tile goes.
    await listed.get_by_role("button", name="End link for Ana Silva (Interpreter)").click()
    dialog = desk.get_by_role("dialog", name=re.compile("End Ana Silva"))
    await dialog.get_by_role("button", name="End link").click()
    await listed.filter(has_text="link ended").wait_for()
    await tiles_playing(phone, "(t) => t.length === 1 && /Officer\\)?$/.test(t[0].caption)",
                        "the victim's page shows the officer alone again")
    await phone.locator("#status", has_text="Connected to the officer").wait_for()
    await ui.screen(desk, "console-guest-ended")


async def test_screen_share_from_the_console_and_the_victims_location(ui, staff):
    officer = await staff()
    created = await officer.create(cad_ref=CAD)
    desk = await console_call(ui, created["id"])
    phone = await ui.page()
    # A phone's browser has no getDisplayMedia.
    await phone.context.add_init_script("delete MediaDevices.prototype.getDisplayMedia;")
    await victim_joins(phone, created["join_url"])
    await tiles_playing(phone, "(t) => t.length === 1 && t[0].width > 0", "the officer's picture")

    # The phone says plainly that it cannot share its screen, and offers the upload.
    assert await phone.get_by_role("button", name="Share screen").count() == 0
    note = phone.locator("#screen-phone")
    assert "Phones cannot share their screen" in await note.text_content()
    await note.get_by_role("link", name=re.compile("send it with the photos")).click()
    await phone.wait_for_function("document.activeElement?.id === 'upload-input'")
    assert "#" not in phone.url  # nothing added to the history

    # The officer shares a screen: the victim gets a tile of its own beside the officer's.
    await desk.get_by_role("button", name="Share screen").click()
    await desk.get_by_role("button", name="Stop sharing screen").wait_for()
    shown = await tiles_playing(phone, "(t) => t.length === 2 && t.some((x) => x.screen && x.width > 0)",
                                "the shared screen on the victim's page")
    screen = next(t for t in shown if t["screen"])
    assert screen["caption"].startswith("Screen shared by") and role_of(screen["caption"]) == "Officer"
    assert screen["width"] >= 640  # a screen, not the camera
    await fits(phone, 320, "victim-screen-320", ui)
    await phone.set_viewport_size({"width": 390, "height": 844})
    await ui.screen(desk, "console-sharing")

    # Stopped: the tile goes, the officer's picture stays.
    await desk.get_by_role("button", name="Stop sharing screen").click()
    await desk.get_by_role("button", name="Share screen").wait_for()
    await tiles_playing(phone, "(t) => t.length === 1 && !t[0].screen", "the officer alone again")

    # The victim shares their location: why first, then the phone asks (granted here).
    place = phone.locator("#location")
    assert "send help to the right place" in await place.text_content()
    await phone.context.grant_permissions(["geolocation"])
    await phone.context.set_geolocation({"latitude": LAT, "longitude": LON, "accuracy": ACCURACY})
    await place.get_by_role("button", name="Share my location").click()
    await place.get_by_text("Your location was shared with the officer").wait_for()
    shared = await place.locator("dl").text_content()
    assert f"{LAT:.5f}" in shared and f"{LON:.5f}" in shared and "about 25 metres" in shared
    await ui.screen(phone, "victim-location")

    # The console shows it, with a map link that opens in a new tab.
    where = desk.locator("#location")
    await where.get_by_role("heading", name="Victim's location").wait_for()
    text = await where.text_content()
    assert f"{LAT:.5f}" in text and f"{LON:.5f}" in text and "about 25 metres" in text
    assert re.search(r"Shared at\s*\d\d:\d\d", text)
    link = where.get_by_role("link", name=re.compile("Open in a map"))
    lat, lon = f"{LAT:.6f}", f"{LON:.6f}"
    assert await link.get_attribute("href") == \
        f"https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=17/{lat}/{lon}"
    assert await link.get_attribute("target") == "_blank"
    assert await link.get_attribute("rel") == "noopener noreferrer"
    await ui.screen(desk, "console-location")
