"""Browser fixtures for every test module that drives Chromium (registered by
``conftest.py`` through ``pytest_plugins``, so no test module imports another's).

Chromium is Debian's (``.ci/run`` installs it; ``EVR_CHROMIUM`` points elsewhere),
started with fake cameras (three, so "Switch camera" has somewhere to go) and a
fake microphone. ``UI`` makes pages in fresh contexts (a phone-sized one for the
victim), saves every screen it is asked to in ``tests/artifacts/`` (git-ignored) and
scans it with axe-core: no serious or critical violation is allowed, nor any uncaught
error or CSP violation on any page. A browser module runs on SQLite only
(``pytestmark = SQLITE_ONLY``): the browser is what it tests, not the database.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from axe_playwright_python.async_playwright import Axe

CHROMIUM = os.environ.get("EVR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
DESK = {"viewport": {"width": 1280, "height": 900}}
TIMEOUT = 20_000  # ms: generous, the machine has two cores and runs two browsers' codecs
CAD = "CAD-2026-000777"

# Test instrumentation, run before the page's own scripts: keep every track the page
# opens, and count opened and stopped tracks in sessionStorage, which survives the
# quick exit's navigation to the neutral page.
TRACK_SPY = """
(() => {
  const md = navigator.mediaDevices;
  if (!md) return;
  const gum = md.getUserMedia.bind(md);
  const bump = (key) => sessionStorage.setItem(key, String(Number(sessionStorage.getItem(key) || 0) + 1));
  window.__tracks = [];
  md.getUserMedia = async (constraints) => {
    const stream = await gum(constraints);
    for (const track of stream.getTracks()) {
      window.__tracks.push(track);
      bump('opened');
      const stop = track.stop.bind(track);
      track.stop = () => { if (track.readyState === 'live') bump('stopped'); stop(); };
    }
    return stream;
  };
})();
"""

#: Console messages a browser logs by itself for refusals these tests provoke.
EXPECTED_CONSOLE = ("Failed to load resource", "WebSocket connection to")


#: A browser module's ``pytestmark``: its tests run on SQLite only (one database is
#: enough, the browser is what they test). It overrides the parameters of
#: ``conftest.db_url`` for the module.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def launch(playwright: Any, cameras: int = 3, allow: bool = True) -> Any:
    """Chromium with ``cameras`` fake cameras and a fake microphone; ``allow``: the
    person taps "Allow" when asked for them, otherwise the request is refused."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium (see .ci/run)")
    args = ARGS + [f"--use-fake-device-for-media-stream=device-count={cameras}"]
    return await playwright.chromium.launch(
        executable_path=CHROMIUM, args=args + ["--use-fake-ui-for-media-stream"] * allow)


@pytest.fixture
async def playwright() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        yield p


@pytest.fixture
async def browser(playwright: Any) -> AsyncIterator[Any]:
    browser = await launch(playwright)
    yield browser
    await browser.close()


class UI:
    """Pages in fresh browser contexts (each its own cookies: its own device) on the
    test server; screenshots and accessibility scans of the screens they show."""

    axe = Axe()

    def __init__(self, browser: Any, base_url: str, test_name: str) -> None:
        self.browser = browser
        self.base_url = base_url
        self.prefix = test_name.removeprefix("test_")
        self.errors: list[str] = []
        self.contexts: list[Any] = []

    async def page(self, phone: bool = True, browser: Any = None, allow: bool = True) -> Any:
        context = await (browser or self.browser).new_context(
            **(PHONE if phone else DESK), base_url=self.base_url,
            permissions=["camera", "microphone"] if allow else [])
        self.contexts.append(context)
        await context.add_init_script(TRACK_SPY)
        return await self.tab(context)

    async def tab(self, context: Any) -> Any:
        """A new page in ``context`` (the same device: same cookies), watched for errors."""
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT)
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: uncaught {e}"))
        page.on("console", lambda m: self._console(page, m))
        return page

    def _console(self, page: Any, message: Any) -> None:
        if message.type == "error" and not message.text.startswith(EXPECTED_CONSOLE):
            self.errors.append(f"{page.url}: console error {message.text}")

    async def screen(self, page: Any, name: str) -> None:
        """Keep a screenshot of what the page shows now, and scan it with axe-core."""
        ARTIFACTS.mkdir(exist_ok=True)
        await page.evaluate("window.scrollTo(0, 0)")
        await page.screenshot(path=ARTIFACTS / f"{self.prefix}-{name}.png", full_page=True)
        results = await self.axe.run(page)
        violations = results.response["violations"]
        (ARTIFACTS / f"{self.prefix}-{name}.axe.json").write_text(json.dumps(violations, indent=1))
        serious = [v for v in violations if v["impact"] in ("serious", "critical")]
        assert not serious, f"{name}: {results.generate_report()}"

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


@pytest.fixture
async def ui(browser: Any, server: Any, request: pytest.FixtureRequest) -> AsyncIterator[UI]:
    made = UI(browser, str(server.make_url("/")).rstrip("/"), request.node.originalname)
    yield made
    await made.close()
    assert made.errors == []


# -- what every browser test does ------------------------------------------------


async def frames(page: Any, selector: str) -> int:
    return await page.locator(selector).evaluate("v => v.getVideoPlaybackQuality().totalVideoFrames")


async def assert_playing(page: Any, selector: str, frames_more: int = 10) -> None:
    """The video element shows a picture (videoWidth > 0) and its frames advance."""
    await page.wait_for_function("s => document.querySelector(s).videoWidth > 0", arg=selector, timeout=TIMEOUT)
    target = await frames(page, selector) + frames_more
    await page.wait_for_function(
        "([s, n]) => document.querySelector(s).getVideoPlaybackQuality().totalVideoFrames >= n",
        arg=[selector, target], timeout=TIMEOUT)


async def victim_joins(page: Any, url: str) -> None:
    response = await page.goto(url)
    assert response.status == 200 and await page.title() == "Video appointment"
    assert response.headers["cache-control"] == "no-store"
    await page.get_by_role("button", name="Join", exact=True).click()
    await page.locator("#s-call").wait_for()
