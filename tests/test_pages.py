"""The staff pages as the server puts them together: the one sign-in form in each, and
in every console's header the same links to every console, its own marked current."""

from __future__ import annotations

import re

import pytest

from evr import pages


@pytest.mark.parametrize("path, name, text", pages.CONSOLES)
def test_each_console_links_every_console_and_marks_its_own(path, name, text):
    page = pages._staff_page(name)
    assert pages.LOGIN_FORM not in page and 'id="login-form"' in page
    links = re.findall(r'<a href="([^"]+)"( aria-current="page")?>([^<]+)</a>', page.split('class="links"')[1]
                       .split("</nav>")[0])
    assert [(href, label) for href, _, label in links] == [(p, t) for p, _, t in pages.CONSOLES]
    assert [href for href, current, _ in links if current] == [path]


async def test_the_pages_are_served_at_their_paths(server, new_client):
    client = await new_client()
    for path, _, text in pages.CONSOLES:
        response = await client.get(path)
        assert response.status == 200 and f'aria-current="page">{text}</a>' in await response.text()
