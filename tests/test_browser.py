"""The victim's page and the officer's console in a real Chromium, against a real server.

The browser fixtures (Debian's Chromium with fake cameras and a fake microphone, the
victim's phone-sized page, screenshots in ``tests/artifacts/`` scanned with axe-core,
no uncaught error or CSP violation on any page) are ``browser_fixtures.py``'s.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, AsyncIterator

import pytest
from browser_fixtures import CAD, SQLITE_ONLY, TIMEOUT, assert_playing, launch, victim_joins
from conftest import PASSWORD, eventually, link_path

from evr.client import CallClient

pytestmark = SQLITE_ONLY

# Loudest sample of what an element's stream plays over 0.8 s (0 = silence; the fake
# microphone beeps every 0.5 s).
PEAK = """async (video) => {
  const ctx = new AudioContext();
  await ctx.resume();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  ctx.createMediaStreamSource(video.srcObject).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  let peak = 0;
  for (const end = performance.now() + 800; performance.now() < end;) {
    analyser.getFloatTimeDomainData(samples);
    for (const x of samples) peak = Math.max(peak, Math.abs(x));
    await new Promise((r) => setTimeout(r, 40));
  }
  await ctx.close();
  return peak;
}"""

# Mean brightness (0-255) of the picture an element shows now.
BRIGHTNESS = """(video) => {
  const canvas = document.createElement('canvas');
  canvas.width = 32; canvas.height = 24;
  const g = canvas.getContext('2d');
  g.drawImage(video, 0, 0, 32, 24);
  const d = g.getImageData(0, 0, 32, 24).data;
  let sum = 0;
  for (let i = 0; i < d.length; i += 4) sum += (d[i] + d[i + 1] + d[i + 2]) / 3;
  return sum / (d.length / 4);
}"""

# -- helpers -------------------------------------------------------------------


async def hears(page: Any, predicate: Any) -> None:
    """Wait until the loudness of what the page plays (its #remote) satisfies ``predicate``."""
    await eventually(lambda: page.locator("#remote").evaluate(PEAK), predicate, timeout=TIMEOUT / 1000,
                     interval=0, what="the loudness of what the page plays")


async def live_tracks(page: Any) -> int:
    return await page.evaluate("window.__tracks.filter((t) => t.readyState === 'live').length")


async def state_after(console: CallClient, since: int, predicate: Any) -> dict[str, Any]:
    """The first state message from the ``since``-th message on that satisfies ``predicate``."""
    def first() -> dict[str, Any] | None:
        return next((m for m in console.messages[since:] if m.get("type") == "state" and predicate(m)), None)

    return await eventually(first, lambda m: m is not None, timeout=TIMEOUT / 1000,
                            what=f"a state message after message {since}")


def victim_connected(state: dict[str, Any]) -> bool:
    return any(p["role"] == "victim" and p["connected"] for p in state["participants"])


async def victim_media(officer: Any, cid: str, predicate: Any = None) -> dict[str, int]:
    """The server's media counters of the victim's current connection (once ``predicate`` holds)."""
    async def counters() -> dict[str, int]:
        detail = await officer.consultation(cid)
        return next(p["media"] for p in detail["participants"] if p["role"] == "victim")

    return await eventually(counters, predicate or (lambda _media: True), timeout=TIMEOUT / 1000, interval=0.1,
                            what="the victim's media counters")


async def sessions(page: Any) -> tuple[int, int]:
    """How many camera and microphone tracks the page opened and stopped (TRACK_SPY)."""
    return tuple(await page.evaluate(
        "['opened', 'stopped'].map((k) => Number(sessionStorage.getItem(k) || 0))"))


# -- the officer's console and the victim's page, both in Chromium ---------------


async def test_officer_console_and_victim_page_in_a_call(ui, users):
    await users("alice")
    desk = await ui.page(phone=False)

    # Sign in.
    await desk.goto("/console")
    assert await desk.title() == "EVR console"
    await ui.screen(desk, "console-1-sign-in")
    await desk.get_by_label("Username").fill("alice")
    await desk.get_by_label("Password").fill("wrong password")
    await desk.get_by_role("button", name="Sign in").click()
    await desk.get_by_role("alert").filter(has_text="password").wait_for()
    await desk.get_by_label("Password").fill(PASSWORD)
    await desk.get_by_role("button", name="Sign in").click()
    await desk.get_by_role("heading", name="New video response").wait_for()

    # The call handler's script: one No means no link.
    form = desk.locator("#create-form")
    await form.get_by_label("CAD reference").fill(CAD)
    for question in ("over 18", "offender absent", "safe to talk", "consent"):
        await form.get_by_role("group", name=re.compile(question)).get_by_label("Yes").check()
    await form.get_by_role("group", name=re.compile("safe to talk")).get_by_label("No").check()
    await form.get_by_label("Phone").fill("07700 900123")
    await form.get_by_role("button", name="Create and send link").click()
    refusal = desk.locator("#create-error")
    await refusal.filter(has_text="in person").wait_for()
    assert "somewhere safe" in await refusal.text_content()
    await ui.screen(desk, "console-2-not-eligible")
    assert await desk.locator("#list-body tr").count() == 0

    await form.get_by_role("group", name=re.compile("safe to talk")).get_by_label("Yes").check()
    await form.get_by_role("button", name="Create and send link").click()
    created = desk.locator("#created")
    await created.wait_for()
    join_url = await desk.get_by_label(re.compile("Join link")).input_value()
    assert "/j/" in join_url
    message = await created.locator("blockquote").text_content()
    assert join_url in message
    assert "SMS to 07700 900123" in await created.text_content()
    row = desk.locator("#list-body tr", has_text=CAD)
    await row.wait_for()
    assert "waiting" in await row.text_content()
    assert re.search(r"\d+:\d\d", await row.locator("td").nth(3).text_content())
    await ui.screen(desk, "console-3-created")

    # A link preview (or a mail scanner) opens the link first, in a browser of its own:
    # that binds nothing.
    other = await ui.page()
    response = await other.goto(join_url)
    assert response.status == 200 and await other.title() == "Video appointment"

    # The victim opens the link, checks camera, microphone and connection (the first
    # button claims the link for this browser), and joins.
    phone = await ui.page()
    response = await phone.goto(join_url)
    assert response.status == 200 and await phone.title() == "Video appointment"
    assert response.headers["cache-control"] == "no-store"
    assert "recorded, like a police body-worn camera" in await phone.locator("#s-intro").text_content()
    await ui.screen(phone, "victim-1-intro")
    await phone.get_by_role("button", name="Check camera and microphone").click()
    await phone.get_by_text("Camera: working").wait_for()
    await phone.get_by_text("Microphone: working").wait_for()
    await phone.get_by_text("Connection: good").wait_for()
    await ui.screen(phone, "victim-2-checked")
    await phone.get_by_role("button", name="Join", exact=True).click()
    await phone.get_by_text("Waiting for an officer to join").wait_for()
    await ui.screen(phone, "victim-3-waiting")

    # The page opened before the victim's cannot take the link: its first button leads
    # to the in-use page, and so does opening the link again there.
    await other.get_by_role("button", name="Join", exact=True).click()
    await other.get_by_role("heading", name="This link is in use on another device").wait_for()
    assert await live_tracks(other) == 0
    response = await other.goto(join_url)
    assert response.status == 403 and response.headers["cache-control"] == "no-store"
    assert "in use on another device" in await other.locator("h1").text_content()
    assert "101" in await other.locator("main").text_content()
    await ui.screen(other, "link-in-use")

    # The officer joins from the list: each sees and hears the other.
    await row.get_by_role("button", name=f"Join {CAD}").click()
    await desk.get_by_role("heading", name=f"Call {CAD}").wait_for()
    await assert_playing(desk, "#remote")
    await assert_playing(phone, "#remote")
    await phone.locator("#status", has_text="Connected to the officer").wait_for()
    await desk.locator("#conn", has_text="Connected").wait_for()
    await desk.locator("#quality", has_text=re.compile(r"(Good|Fair|Poor), .*video \d+×\d+ at \d+ fps")).wait_for()
    assert re.fullmatch(r"\d\d?:\d\d:\d\d.*", await desk.locator("#arrived").text_content())
    timer = await desk.locator("#timer").text_content()
    assert re.fullmatch(r"\d+:\d\d", timer) and timer != "0:00"
    await desk.wait_for_function("t => document.querySelector('#timer').textContent !== t", arg=timer)
    await desk.locator("#participants", has_text="Victim: connected").wait_for()
    # The server records the call: both pages show it.
    await phone.locator("#rec", has_text="Recording").wait_for()
    await desk.locator("#rec", has_text="Recording").wait_for()
    await ui.screen(desk, "console-4-call")
    await ui.screen(phone, "victim-4-call")

    # The victim mutes: the officer hears silence; unmutes: sound again.
    await hears(desk, lambda peak: peak > 0.01)
    await phone.get_by_role("button", name="Mute").click()
    await hears(desk, lambda peak: peak < 0.001)
    await phone.get_by_role("button", name="Unmute").click()
    await hears(desk, lambda peak: peak > 0.01)
    # And the officer's mute silences what the victim hears.
    await hears(phone, lambda peak: peak > 0.01)
    await desk.get_by_role("button", name="Mute").click()
    await hears(phone, lambda peak: peak < 0.001)
    await desk.get_by_role("button", name="Unmute").click()
    await hears(phone, lambda peak: peak > 0.01)

    # Camera off: the officer's picture goes black; on: it comes back.
    assert await desk.locator("#remote").evaluate(BRIGHTNESS) > 20
    await phone.get_by_role("button", name="Camera off").click()
    await desk.wait_for_function(f"() => ({BRIGHTNESS})(document.querySelector('#remote')) < 5", timeout=TIMEOUT)
    await phone.get_by_role("button", name="Camera on").click()
    await desk.wait_for_function(f"() => ({BRIGHTNESS})(document.querySelector('#remote')) > 20", timeout=TIMEOUT)

    # The officer pauses (to ask a sergeant): both sides say so; resumes: pictures move again.
    await desk.get_by_role("button", name="Pause").click()
    await desk.locator("#call-status", has_text="paused").wait_for()
    await phone.get_by_text("The call is paused").wait_for()
    await ui.screen(phone, "victim-5-paused")
    await ui.screen(desk, "console-5-paused")
    await desk.get_by_role("button", name="Resume").click()
    await desk.locator("#call-status", has_text="live").wait_for()
    await assert_playing(desk, "#remote")
    await assert_playing(phone, "#remote")

    # The officer closes the link, after confirming.
    await desk.get_by_role("button", name="Close link").click()
    dialog = desk.get_by_role("dialog", name="Close this link?")
    await dialog.wait_for()
    await ui.screen(desk, "console-6-confirm-close")
    await dialog.get_by_role("button", name="Cancel").click()
    assert await desk.locator("#call-status").text_content() == "live"
    await desk.get_by_role("button", name="Close link").click()
    await dialog.get_by_role("button", name="Close link").click()
    await desk.get_by_text("This link is closed").wait_for()
    await phone.get_by_role("heading", name="This appointment has ended").wait_for()
    assert "call 101" in await phone.locator("#s-ended").text_content()
    # The end screen offers the victim's survey (a link of its own, single-use).
    survey = phone.get_by_role("link", name="Answer the questions")
    await survey.wait_for()
    assert (await survey.get_attribute("href")).startswith("/s/")
    assert await live_tracks(phone) == 0
    assert await live_tracks(desk) == 0
    assert await desk.locator("#rec").is_hidden()
    await ui.screen(phone, "victim-6-ended")
    await desk.get_by_role("button", name="Back to list").click()
    await row.filter(has_text="closed").wait_for()
    assert await row.get_by_role("button", name=re.compile("^Join")).count() == 0  # only its recordings remain
    await ui.screen(desk, "console-7-list")
    await desk.reload()  # the session survives a reload
    await row.filter(has_text="closed").wait_for()
    await desk.get_by_role("button", name="Log out").click()
    await desk.get_by_role("heading", name="Sign in").wait_for()
    async with desk.expect_response("**/api/me") as me:
        await desk.reload()
    assert (await me.value).status == 401
    await desk.get_by_role("heading", name="Sign in").wait_for()
    assert await desk.locator("#v-home").is_hidden()

    # The link is dead forever: opening it again shows the closed page.
    response = await phone.goto(join_url)
    assert response.status == 410 and response.headers["cache-control"] == "no-store"
    assert await phone.locator("h1").text_content() == "This appointment has ended"
    await ui.screen(phone, "link-closed")


# -- the victim's page with an aiortc officer ----------------------------------


@pytest.fixture
async def officer_call(staff: Any) -> AsyncIterator[Any]:
    """An officer (aiortc, through the console's socket) in a new consultation."""
    clients: list[CallClient] = []
    officers: list[Any] = []

    async def make() -> tuple[Any, dict[str, Any], CallClient]:
        if not officers:
            officers.append(await staff())
        officer = officers[0]
        created = await officer.create()
        console = CallClient(officer.client.session, officer.ws_url(created["id"]))
        clients.append(console)
        await console.join()
        return officer, created, console

    yield make
    for console in clients:
        await console.leave()


async def test_victim_break_network_change_sound_only_camera_switch_and_leave(ui, officer_call):
    officer, created, console = await officer_call()
    cid = created["id"]
    phone = await ui.page()
    await victim_joins(phone, created["join_url"])
    await console.wait_media(audio=50, video=20, timeout=TIMEOUT / 1000)
    await assert_playing(phone, "#remote")
    await phone.locator("#status", has_text="Connected to the officer").wait_for()
    await phone.locator("#signal", has_text=re.compile("Signal: (good|fair|weak)")).wait_for()

    # A break: the officer is told, and nothing leaves the phone until the victim rejoins.
    since = len(console.messages)
    await phone.get_by_role("button", name="Take a break").click()
    await state_after(console, since, lambda m: m["status"] == "paused")
    await phone.locator("#status", has_text="Paused").wait_for()
    await phone.get_by_text("Nobody can see or hear you").wait_for()
    await ui.screen(phone, "break")
    paused = await victim_media(officer, cid)
    await asyncio.sleep(1.0)  # the absence of media needs a period to be seen
    assert await victim_media(officer, cid) == paused
    since = len(console.messages)
    await phone.get_by_role("button", name="Rejoin").click()
    await state_after(console, since, lambda m: m["status"] == "live")
    await console.wait_media(audio=50, video=20, timeout=TIMEOUT / 1000)
    await assert_playing(phone, "#remote")

    # The network drops and comes back: a new offer on the same link, and the page says so.
    before = await victim_media(officer, cid)
    await phone.context.set_offline(True)
    await phone.locator("#status", has_text="You are offline").wait_for()
    await ui.screen(phone, "offline")
    await phone.context.set_offline(False)
    await phone.get_by_text("You were reconnected after a network change").wait_for()
    await phone.locator("#status", has_text="Connected to the officer").wait_for()
    after = await victim_media(officer, cid)
    assert after["audio_in_packets"] < before["audio_in_packets"]  # a new connection counts from zero
    await console.wait_media(audio=50, video=20, timeout=TIMEOUT / 1000)
    await assert_playing(phone, "#remote")

    # Sound only: a new connection in which no video flows either way; the camera is off.
    sound_only = phone.get_by_role("button", name="Sound only")
    await sound_only.click()
    assert await sound_only.get_attribute("aria-pressed") == "true"
    await phone.get_by_text("Sound only: video is off").wait_for()
    media = await victim_media(officer, cid, lambda m: m["audio_in_packets"] >= 50 and not m["video_in_frames"])
    assert media["video_out_frames"] == 0
    assert await live_tracks(phone) == 1
    assert await phone.get_by_role("button", name="Camera off").is_disabled()
    await ui.screen(phone, "sound-only")
    await sound_only.click()
    assert await sound_only.get_attribute("aria-pressed") == "false"
    await victim_media(officer, cid, lambda m: m["video_in_frames"] >= 20 and m["video_out_frames"] >= 20)
    await assert_playing(phone, "#remote")

    # Switch camera: the next camera each time (Chromium's fake cameras say nothing of
    # which way they face). Its second one is a depth camera, which no encoder takes;
    # the third is a colour camera again, whose video reaches the officer.
    camera = "v => v.srcObject.getVideoTracks()[0]?.getSettings().deviceId"
    seen = [await phone.locator("#self").evaluate(camera)]
    for _ in range(2):
        await phone.get_by_role("button", name="Switch camera").click()
        await phone.wait_for_function(
            f"seen => !seen.includes(({camera})(document.querySelector('#self')))", arg=seen)
        seen.append(await phone.locator("#self").evaluate(camera))
        assert await live_tracks(phone) == 2
    await console.wait_media(video=20, timeout=TIMEOUT / 1000)

    # Leave: camera and microphone off, the officer sees the victim go; rejoin with the same link.
    since = len(console.messages)
    await phone.get_by_role("button", name="Leave").click()
    await phone.get_by_role("heading", name="You left the call").wait_for()
    assert await live_tracks(phone) == 0
    await state_after(console, since, lambda m: not victim_connected(m))
    await ui.screen(phone, "left")
    since = len(console.messages)
    await phone.get_by_role("button", name="Rejoin").click()
    await state_after(console, since, victim_connected)
    await assert_playing(phone, "#remote")
    await console.wait_media(audio=50, video=20, timeout=TIMEOUT / 1000)


async def test_quick_exit(ui, officer_call):
    officer, created, console = await officer_call()
    phone = await ui.page()
    await victim_joins(phone, created["join_url"])
    await console.wait_media(audio=20, video=10, timeout=TIMEOUT / 1000)

    # The same phone joins again in another tab: the first tab gives way (no tug of war).
    first = phone
    phone = await ui.tab(first.context)
    await victim_joins(phone, created["join_url"])
    await first.get_by_role("heading", name="The call moved to another window").wait_for()
    assert await live_tracks(first) == 0
    await ui.screen(first, "moved-to-another-window")
    await first.close()
    await assert_playing(phone, "#remote")
    depth = await phone.evaluate("history.length")

    # One tap: camera and microphone stopped, the call left, a neutral page in place.
    since = len(console.messages)
    await phone.get_by_role("link", name="Quick exit").click()
    await phone.wait_for_url("**/static/neutral.html")
    assert await phone.title() == "Recipes"
    opened, stopped = await sessions(phone)
    assert opened == stopped == 2
    await state_after(console, since, lambda m: not victim_connected(m))
    assert await phone.evaluate("history.length") == depth  # replaced, not added
    await ui.screen(phone, "neutral-page")
    await phone.go_back()
    assert "/j/" not in phone.url

    # Escape twice on a keyboard does the same, from the first screen.
    await phone.goto(created["join_url"])
    await phone.get_by_role("button", name="Check camera and microphone").click()
    await phone.get_by_text("Camera: working").wait_for()
    await phone.keyboard.press("Escape")
    await phone.keyboard.press("Escape")
    await phone.wait_for_url("**/static/neutral.html")
    opened, stopped = await sessions(phone)
    assert opened == stopped == 4

    # And from the server's own pages (here: the link refused on another phone).
    other = await ui.page()
    assert (await other.goto(created["join_url"])).status == 403
    await other.get_by_role("link", name="Quick exit").click()
    await other.wait_for_url("**/static/neutral.html")
    await other.go_back()
    assert "/j/" not in other.url


async def test_camera_blocked_and_no_camera(ui, officer_call, playwright):
    officer, created, console = await officer_call()

    # The person taps "Block": the page says how to allow them, and cannot join without.
    blocking = await launch(playwright, allow=False)
    try:
        page = await ui.page(browser=blocking, allow=False)
        await page.goto(created["join_url"])
        await page.get_by_role("button", name="Check camera and microphone").click()
        help_text = page.locator("#media-help")
        await help_text.filter(has_text="blocked").wait_for()
        assert "allow Camera and Microphone" in await help_text.text_content()
        await ui.screen(page, "blocked")
        await page.get_by_role("button", name="Join", exact=True).click()
        await page.locator("#s-intro").wait_for()
        assert await page.locator("#s-call").is_hidden()
        await page.context.close()
    finally:
        await blocking.close()

    # A phone without a camera: it joins with sound only, and the officer hears it.
    _, created, console = await officer_call()
    cameraless = await launch(playwright, cameras=0)
    try:
        page = await ui.page(browser=cameraless)
        await page.goto(created["join_url"])
        await page.get_by_role("button", name="Check camera and microphone").click()
        await page.get_by_text("We could not find a camera").wait_for()
        await ui.screen(page, "no-camera")
        await page.get_by_role("button", name="Join with sound only").click()
        await page.locator("#status", has_text="Connected to the officer").wait_for()
        await console.wait_media(audio=50, video=0, timeout=TIMEOUT / 1000)
        assert console.video_frames == 0
        await ui.screen(page, "sound-only-call")
        # Video back on: no camera to send, but the officer can be seen.
        await page.get_by_role("button", name="Sound only").click()
        await page.get_by_text("You can see the officer, but they cannot see you").wait_for()
        await assert_playing(page, "#remote")
        await page.context.close()
    finally:
        await cameraless.close()


async def test_link_pages_unknown_expired_refused_and_closed_while_open(ui, staff, clock):
    officer = await staff()
    phone = await ui.page()

    response = await phone.goto("/j/not-a-real-link")
    assert response.status == 404 and response.headers["cache-control"] == "no-store"
    assert await phone.title() == "Video appointment"
    assert "call 101" in await phone.locator("main").text_content()
    await ui.screen(phone, "unknown")

    expired = await officer.create()
    clock.advance(hours=49)
    response = await phone.goto(expired["join_url"])
    assert response.status == 410
    assert await phone.locator("h1").text_content() == "This link has expired"
    await ui.screen(phone, "expired")

    # The server refuses the socket as abuse (1008): the page stops and says what to do.
    officer = await staff("bob")  # two days on, alice's session has ended
    refused = await officer.create()

    async def refuse(ws: Any) -> None:
        await ws.close(code=1008, reason="too many messages")

    abused = await ui.page()
    await abused.route_web_socket(re.compile(r"/j/.*/ws$"), refuse)
    await abused.goto(refused["join_url"])
    await abused.get_by_role("button", name="Join", exact=True).click()
    await abused.get_by_role("heading", name="Something went wrong").wait_for()
    assert "Try again" in await abused.locator("#s-error").text_content()
    assert await live_tracks(abused) == 0
    await ui.screen(abused, "refused")

    # Closed by police while the victim's page sat open: Join leads to the closed page.
    created = await officer.create()
    await phone.goto(created["join_url"])
    await officer.post(f"/api/consultations/{created['id']}/close")
    await phone.get_by_role("button", name="Join", exact=True).click()
    await phone.get_by_role("heading", name="This appointment has ended").wait_for()
    assert await live_tracks(phone) == 0
    assert phone.url.endswith(link_path(created["join_url"]))
