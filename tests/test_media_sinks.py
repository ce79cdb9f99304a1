"""The bridge's frame-sink seam: what a room feeds the sinks its owner gives it.

The recording attaches through this seam (tests/test_recording*.py cover it end to
end); guests and a faster media engine will too. These tests drive a room with a
stand-in sink and no peer connection, so each rule of the seam is seen on its own.
"""

from __future__ import annotations

import ast
import asyncio
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiortc.rtp import RtpPacket

from evr.config import Settings
from evr.consultations import Consultations
from evr.media import bridge
from evr.media.bridge import FrameSink, Leg, Participant, Room
from evr.media.passthrough import EncodedFrame
from evr.signalling import Hub


class FakePC:
    connectionState = "connected"

    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class Sink:
    """Records what the room told it."""

    def __init__(self, events: list[tuple[Any, ...]]) -> None:
        self.events = events
        self.finished = False

    def on_frame(self, kind: str, frame: EncodedFrame, connection: object) -> None:
        self.events.append(("frame", kind, frame.pts, connection))

    def on_gap(self, reason: str) -> None:
        self.events.append(("gap", reason))

    async def on_close(self, reason: str) -> None:
        self.events.append(("close", reason))
        self.finished = True


def frame(pts: int) -> EncodedFrame:
    return EncodedFrame(b"\x00", pts, Fraction(1, 90000), True, 0.0)


class Inbound:
    """Stands in for a receiver's packet hook: whether frames are assembled."""

    framing = False

    def frames(self, wanted: bool) -> None:
        self.framing = wanted


async def media(room: Room, p: Participant, leg: Leg, feed: str, pts: int, inbound: Inbound | None = None) -> None:
    """One frame of ``p``'s ``feed`` on ``leg``, as the room sees it: its packet on
    the live path, then (when frames are assembled) the whole frame for the sinks."""
    inbound = inbound or Inbound()
    packet = RtpPacket(payload_type=96, marker=1, sequence_number=pts, timestamp=pts, ssrc=1, payload=b"\x10\x00")
    room._relay(p, leg, feed, inbound, packet, 0.0)  # type: ignore[arg-type]
    if inbound.framing:
        room._capture(p, leg, feed, frame(pts))


def room_with(factories: list[Any]) -> tuple[Room, list[str]]:
    changes: list[str] = []

    async def on_change(room: Room) -> None:
        changes.append(room.id)

    return Room("c1", [], on_change, factories), changes


def joined(room: Room, key: str = "victim") -> tuple[Participant, Leg]:
    p = room.participant(key, key)
    p.leg = Leg(FakePC())  # type: ignore[arg-type]
    return p, p.leg


async def test_a_sink_is_made_at_the_first_frame_and_fed_every_forwarded_frame():
    events: list[tuple[Any, ...]] = []
    asked: list[tuple[str, Participant]] = []

    def factory(consultation_id: str, participant: Participant, track: str) -> FrameSink:
        asked.append((consultation_id, participant))
        return Sink(events)

    room, changes = room_with([factory])
    victim, leg = joined(room)
    assert not asked and not room.capturing  # no media, no sink
    await media(room, victim, leg, "video", 0)
    await media(room, victim, leg, "audio", 1)
    assert asked == [("c1", victim)]  # once per participant
    assert events == [("frame", "video", 0, leg), ("frame", "audio", 1, leg)]
    assert room.capturing
    await room.tasks.wait(1)
    assert changes == ["c1"]  # everyone is told: the hub reports it as recording


async def test_a_failing_sink_or_factory_never_ends_the_call():
    """The room feeds sinks from aiortc's receive path: an exception there closed the
    participant's transport (their audio and video both dropped), and a failing
    factory was asked again on every frame. Now watchers get every frame, a failing
    sink is detached and a failing factory asked once."""
    events: list[tuple[Any, ...]] = []
    asked: list[str] = []

    class Broken(Sink):
        def on_frame(self, kind: str, frame: EncodedFrame, connection: object) -> None:
            raise RuntimeError("disk gone")

    def failing_factory(consultation_id: str, participant: Participant, track: str) -> FrameSink:
        asked.append(participant.role)
        raise RuntimeError("no spool")

    room, _ = room_with([failing_factory, lambda cid, p, track: Broken(events), lambda cid, p, track: Sink(events)])
    victim, leg = joined(room)
    class Watcher:
        pushed: list[int] = []
        bitrate = None

        def forward(self, packet: RtpPacket, via: object, arrival: float) -> None:
            self.pushed.append(packet.timestamp)

    watcher = Watcher()
    victim.watchers["video"].add(watcher)  # type: ignore[arg-type]
    for pts in range(3):
        await media(room, victim, leg, "video", pts)
    assert watcher.pushed == [0, 1, 2]  # the live call goes on
    assert asked == ["victim"]  # asked once, not on every frame
    assert [e[2] for e in events if e[0] == "frame"] == [0, 1, 2]  # the healthy sink still records
    assert len(victim.sinks) == 1


async def test_no_frames_while_paused_or_from_a_replaced_connection_and_gaps_say_why():
    events: list[tuple[Any, ...]] = []
    room, _ = room_with([lambda cid, p, track: Sink(events)])
    victim, old = joined(room)
    await media(room, victim, old, "video", 0)
    room.set_paused(True)
    assert not room.capturing
    await media(room, victim, old, "video", 1)
    room.set_paused(False)
    victim.leg = new = Leg(FakePC())  # type: ignore[arg-type]
    await media(room, victim, old, "video", 2)  # the replaced connection
    await media(room, victim, new, "video", 3)
    await room.disconnect(victim)
    assert events == [("frame", "video", 0, old), ("gap", "pause"), ("frame", "video", 3, new),
                      ("gap", "disconnected")]
    await room.close()


async def test_closing_the_room_closes_every_sink_once_after_the_connections():
    events: list[tuple[Any, ...]] = []
    room, _ = room_with([lambda cid, p, track: Sink(events), lambda cid, p, track: Sink(events)])
    victim, leg = joined(room)
    await media(room, victim, leg, "audio", 0)
    await room.close("server_shutdown")
    assert leg.pc.closed  # type: ignore[attr-defined]
    assert events == [("frame", "audio", 0, leg)] * 2 + [("close", "server_shutdown")] * 2
    assert not room.capturing
    await media(room, victim, leg, "audio", 1)  # after close: nothing more
    assert len(events) == 4


async def test_a_factory_may_leave_a_participant_alone():
    room, changes = room_with([lambda cid, p, track: None])
    victim, leg = joined(room)
    await media(room, victim, leg, "video", 0)
    assert victim.sinks == [] and not room.capturing
    await room.tasks.wait(1)
    assert changes == []
    assert victim.counters.video_in_frames == 0 and leg.counters.video_in_frames == 1


async def test_the_hub_gives_its_rooms_the_sinks_the_app_gave_it(tmp_path: Path):
    events: list[tuple[Any, ...]] = []
    settings = Settings.load(data_dir=tmp_path, environ={})
    hub = Hub(settings, clock=None, db_factory=None, consultations=Consultations(settings, None, None, None),
              sinks=[lambda cid, p, track: Sink(events)])
    room = hub.room(SimpleNamespace(id="c1", status="live"))  # type: ignore[arg-type]
    victim, leg = joined(room)
    assert hub.state_message("c1")["recording"] is False
    await media(room, victim, leg, "video", 0)
    assert hub.state_message("c1")["recording"] is True
    await room.close()
    assert hub.state_message("c1")["recording"] is False


def test_the_bridge_neither_imports_nor_names_recording():
    tree = ast.parse(Path(bridge.__file__).read_text())
    named: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            named += [node.module or ""] + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            named += [a.name for a in node.names]
        elif isinstance(node, ast.Name):
            named.append(node.id)
        elif isinstance(node, ast.Attribute):
            named.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            named.append(node.name)
        elif isinstance(node, ast.arg):
            named.append(node.arg)
    assert not [n for n in named if "record" in n.lower()]


def test_the_recorder_is_a_frame_sink():
    from evr.recording.recorder import Recorder

    for name in ("on_frame", "on_gap", "on_close"):
        assert callable(getattr(Recorder, name))
    assert asyncio.iscoroutinefunction(Recorder.on_close)
    assert "finished" in Recorder.__dataclass_fields__
