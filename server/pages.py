"""HTML responses: the pages from web/, and plain message pages for refused links.

Every victim-facing page is neutral ("Video appointment"), has a quick exit, and
says what to do next.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from pathlib import Path
from typing import Optional

from aiohttp import web

import evr.web

#: The pages, scripts and styles (the ``web/`` folder, installed as ``evr.web``).
WEB_DIR = Path(evr.web.__file__).resolve().parent

EMERGENCY = "In an emergency, call 999."

MESSAGE_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="robots" content="noindex, nofollow">
<title>Video appointment</title>
<link rel="stylesheet" href="/static/style.css">
<script type="module" src="/static/quickexit.js"></script>
</head>
<body class="victim">
<header class="exit-bar">
<a class="quick-exit" id="quick-exit" href="/static/neutral.html" rel="noreferrer">Quick exit</a>
</header>
<main class="message-page">
<h1>{title}</h1>
<p>{text}</p>
<p><strong>What to do next:</strong> {next_step}</p>
<p>{emergency}</p>
</main>
</body>
</html>
"""


@lru_cache(maxsize=8)
def _read(name: str) -> str:
    return (WEB_DIR / name).read_text(encoding="utf-8")


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


#: What ``<body>`` of the link's page says whose link it is (``victim`` or a guest's
#: role): the page's scripts word it for them.
LINK_ROLE = "data-link-role"
_BODY = re.compile(r"<body(?=[\s>])", re.IGNORECASE)


@lru_cache(maxsize=8)
def _link_page(role: str) -> str:
    body = f'<body {LINK_ROLE}="{html.escape(role, quote=True)}"'
    page, found = _BODY.subn(lambda _: body, _read("victim.html"), 1)
    if not found:
        raise RuntimeError("victim.html has no <body>")
    return page


def victim(role: str = "victim") -> web.Response:
    """The link's page (``web/victim.html``), for the victim or a guest (``role``)."""
    return _html(_link_page(role))


def survey() -> web.Response:
    """The victim's survey (``/s/{token}``): a victim's page, with the quick exit."""
    return _html(_read("survey.html"))


#: Where a staff page takes the one sign-in form (``web/login.html``).
LOGIN_FORM = "      <!-- the sign-in form: web/login.html, put here by evr.pages.staff_page -->\n"


#: The staff consoles (path, page, link text), linked from each one's header in this order.
CONSOLES = (("/console", "console.html", "Console"), ("/queue", "queue.html", "Queue"),
            ("/desk", "desk.html", "Desk"), ("/dashboard", "dashboard.html", "Dashboard"),
            ("/incidents/new", "incident-new.html", "New incident"))
#: Where a console's header takes the links to the consoles.
CONSOLE_LINKS = "      <!-- the consoles' links: put here by evr.pages.staff_page -->\n"


def _console_links(name: str) -> str:
    """The links to every console, the page's own marked as the current one."""
    current = ' aria-current="page"'
    return "".join(f'      <a href="{path}"{current if page == name else ""}>{text}</a>\n'
                   for path, page, text in CONSOLES)


@lru_cache(maxsize=8)
def _staff_page(name: str) -> str:
    form = _read("login.html").split("-->\n", 1)[1]  # without its heading comment
    page = _read(name)
    if LOGIN_FORM not in page:
        raise RuntimeError(f"{name} has no place for the sign-in form")
    return page.replace(LOGIN_FORM, form).replace(CONSOLE_LINKS, _console_links(name))


def staff_page(name: str) -> web.Response:
    """A staff page (``console.html``, ``records.html``...) with the one sign-in form and,
    in a console's header, the links to the consoles (:data:`CONSOLES`)."""
    return _html(_staff_page(name))


async def console(_request: web.Request) -> web.Response:
    return staff_page("console.html")


def message(status: int, title: str, text: str,
            next_step: str = "if you need the police, call 101.") -> web.Response:
    """A plain page for the victim: what happened, what to do next, and the quick exit."""
    body = MESSAGE_PAGE.format(title=html.escape(title), text=html.escape(text),
                               next_step=html.escape(next_step), emergency=EMERGENCY)
    return _html(body, status)


def link_unknown() -> web.Response:
    return message(404, "Link not recognised", "This link does not match any appointment.",
                   "check that you opened the whole link from your message. "
                   "If it still does not work, call 101 and ask for a new link.")


def link_closed() -> web.Response:
    return message(410, "This appointment has ended",
                   "The officer has closed this appointment, so the link cannot be used again.",
                   "if you need to speak to the police again, call 101.")


def link_expired() -> web.Response:
    return message(410, "This link has expired",
                   "Appointment links stop working if they are not opened in time.",
                   "call 101 and ask for a new video appointment link.")


def link_in_use() -> web.Response:
    return message(
        403,
        "This link is in use on another device",
        "For your safety the link works only on the phone or browser that opened it first.",
        "open the link on that phone or browser. If you cannot, call 101 and ask for a new link.",
    )


def too_many_unknown_links() -> web.Response:
    return message(429, "Too many attempts",
                   "This phone or network tried too many links that do not match an appointment.",
                   "wait a minute, then open the whole link from your message again. "
                   "If it still does not work, call 101 and ask for a new link.")


#: The page for each of the link's refusals (:class:`evr.links.LinkRefused` codes).
_REFUSAL_PAGES = {
    "unknown_link": link_unknown,
    "link_closed": link_closed,
    "link_expired": link_expired,
    "link_in_use": link_in_use,
    "too_many_unknown_links": too_many_unknown_links,
}


def refusal(status: int, reason: str, text: str, retry_after: Optional[int] = None) -> web.Response:
    """A refusal (an :class:`evr.errors.ApiError`) as a page a person can read: the
    link's own pages for its refusals (by their ``reason``), a plain message page
    otherwise."""
    page = _REFUSAL_PAGES.get(reason)
    response = page() if page else message(status, "This page cannot be shown", text)
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response
