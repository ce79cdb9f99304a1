"""No third party is contacted for ICE (issue 11, finding 19): with no ``ice_servers``
configured the bridge, the pages and the Python client use none at all, where aiortc
(``iceServers=None``) would ask stun.l.google.com for every peer connection."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection

from evr.config import Settings
from evr.consultations import Consultations
from evr.media import bridge
from evr.signalling import Hub

WEB = Path(__file__).resolve().parent.parent / "web"


@pytest.fixture
def peer_connections(monkeypatch):
    """Every RTCPeerConnection the bridge makes."""
    made: list[RTCPeerConnection] = []

    class Spy(RTCPeerConnection):
        def __init__(self, configuration=None):
            super().__init__(configuration)
            self.given = configuration
            made.append(self)

    monkeypatch.setattr(bridge, "RTCPeerConnection", Spy)
    return made


def gatherers(pc: RTCPeerConnection):
    return [t.iceGatherer for t in pc._RTCPeerConnection__iceTransports]


async def test_the_bridge_gathers_no_server_reflexive_candidate_and_asks_nobody(call, peer_connections):
    c = await call()
    await c.console.wait_media(audio=10, video=5)
    assert len(peer_connections) == 2
    for pc in peer_connections:
        assert pc.given is not None and pc.given.iceServers == []
        for gatherer in gatherers(pc):
            connection = gatherer._connection
            assert connection.stun_server is None and connection.turn_server is None
            assert {candidate.type for candidate in gatherer.getLocalCandidates()} == {"host"}
    # The client got the same (empty) list from the server's config message.
    config = next(m for m in c.victim.messages if m["type"] == "config")
    assert config["ice_servers"] == []
    assert c.victim.pc is not None and c.victim.ice_servers == []
    for gatherer in gatherers(c.victim.pc):
        assert gatherer._connection.stun_server is None


def test_configured_servers_are_the_only_ones_given_to_the_bridge_and_the_pages(tmp_path):
    configured = Settings.load(data_dir=tmp_path, environ={
        "EVR_ICE_SERVERS": "stun:stun.force.example:3478, turn:turn.force.example:3478?transport=udp",
        "EVR_TURN_USERNAME": "evr", "EVR_TURN_PASSWORD": "s3cret"})
    hub = Hub(configured, clock=None, db_factory=None, consultations=Consultations(configured, None, None, None))
    assert [s.urls for s in hub.ice_servers] == ["stun:stun.force.example:3478",
                                                  "turn:turn.force.example:3478?transport=udp"]
    assert hub.config_message() == {"type": "config", "ice_servers": [
        {"urls": ["stun:stun.force.example:3478"]},
        {"urls": ["turn:turn.force.example:3478?transport=udp"], "username": "evr", "credential": "s3cret"},
    ]}
    plain = Settings.load(data_dir=tmp_path, environ={})
    unconfigured = Hub(plain, clock=None, db_factory=None, consultations=Consultations(plain, None, None, None))
    assert unconfigured.ice_servers == [] and unconfigured.config_message()["ice_servers"] == []


def test_the_pages_give_their_peer_connection_only_the_servers_the_server_names():
    scripts = {p.name: p.read_text() for p in WEB.glob("*.js")}
    assert scripts
    for name, text in scripts.items():
        assert not re.search(r"\b(stuns?|turns?):", text.replace("(stun|stuns|turn|turns):", "")), name
        assert "google.com" not in text and "mozilla.com" not in text, name
        # A browser's default is up to the browser: always say which servers.
        for match in re.finditer(r"new RTCPeerConnection\(([^)]*)\)", text):
            assert match.group(1).strip().startswith("{ iceServers: this.iceServers"), (name, match.group(0))
    assert "new RTCPeerConnection({ iceServers: this.iceServers })" in scripts["call.js"]
    assert "this.iceServers = [];" in scripts["call.js"]
