"""Property tests of the header parsers that decide who a request is from: the
``Origin`` check (logins, link claims, WebSockets) and the client address behind
trusted proxies (``X-Forwarded-For``). Whatever a client writes, they answer without
an exception; only the exact origin passes; the address is always an IP or the peer."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from evr.app import forwarded_client
from evr.config import Settings
from evr.http import SETTINGS, same_origin

FAST = settings(max_examples=300, deadline=None)
SERVICE = "https://evr.force.example"


def _request(headers: dict[str, str], public_url: str = SERVICE) -> web.Request:
    app = web.Application()
    app[SETTINGS] = Settings.load(data_dir="/nonexistent", environ={}, public_url=public_url)
    return make_mocked_request("GET", "/api/me", headers=headers, app=app)


header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF), max_size=80)


@FAST
@given(st.one_of(header_text, st.sampled_from([SERVICE, SERVICE + "/", "https://evr.force.example:443",
                                                "http://evr.force.example", "https://evr.force.example.evil",
                                                "https://user@evr.force.example", "null", "HTTPS://EVR.FORCE.EXAMPLE"])))
def test_only_the_services_own_origin_passes(origin: str) -> None:
    allowed = same_origin(_request({"Origin": origin}))
    canonical = origin.lower().rstrip("/").replace(":443", "").rstrip(".")
    assert allowed == (canonical == SERVICE)


def _client_behind(proxies: str, peer: str, forwarded: list[str]) -> Any:
    settings_ = Settings.load(data_dir="/nonexistent", environ={}, trusted_proxies=proxies)
    seen: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.remote)
        return web.Response()

    request = make_mocked_request("GET", "/", headers=[("X-Forwarded-For", v) for v in forwarded])
    request = request.clone(remote=peer)
    asyncio.run(forwarded_client(settings_)(request, handler))
    return seen[0]


hop = st.one_of(st.ip_addresses().map(str), header_text)


@FAST
@given(st.lists(hop, max_size=5))
def test_the_client_behind_a_trusted_proxy_is_an_address_or_the_proxy(forwarded: list[str]) -> None:
    client = _client_behind("10.0.0.0/8", "10.0.0.1", forwarded)
    ipaddress.ip_address(client)  # never junk from the header
    if not forwarded:
        assert client == "10.0.0.1"


@FAST
@given(st.lists(hop, max_size=5))
def test_an_untrusted_peer_cannot_choose_its_address(forwarded: list[str]) -> None:
    assert _client_behind("10.0.0.0/8", "203.0.113.9", forwarded) == "203.0.113.9"
