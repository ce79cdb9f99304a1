"""A playable copy: a recording's segments joined into one WebM by remux (no codec runs).

The segments carry the recording's own timeline (milliseconds since it started), so a
pause or a rejoin stays a true gap in the joined file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import av

from .recorder import MS


def remux(segments: list[Path], out: Path) -> None:
    """Join ``segments`` (in order) into ``out``."""
    with av.open(str(out), "w", format="webm") as output:
        streams: dict[str, Any] = {}
        last: dict[str, int] = {}
        for path in segments:
            with av.open(str(path)) as source:
                if not streams:
                    streams = _streams(output, source)
                by_index = {s.index: s.type for s in source.streams}
                for packet in source.demux():
                    kind = by_index.get(packet.stream.index)
                    if packet.pts is None or packet.dts is None or packet.size == 0 or kind not in streams:
                        continue
                    ms = int(packet.pts * packet.time_base * 1000)
                    ms = max(ms, last.get(kind, -1) + 1)
                    last[kind] = ms
                    packet.pts = packet.dts = ms
                    packet.time_base = MS
                    packet.stream = streams[kind]
                    output.mux(packet)


def _streams(output: Any, source: Any) -> dict[str, Any]:
    streams: dict[str, Any] = {}
    video: Optional[Any] = next((s for s in source.streams if s.type == "video"), None)
    audio: Optional[Any] = next((s for s in source.streams if s.type == "audio"), None)
    if video is not None:
        streams["video"] = output.add_stream_from_template(video)
    if audio is not None:
        streams["audio"] = output.add_stream_from_template(audio)
    for stream in streams.values():
        stream.time_base = MS
    return streams
