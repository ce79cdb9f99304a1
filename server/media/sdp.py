"""SDP text the bridge reads and writes beyond what aiortc does: screens, numbering
and candidates the server cannot reach.

- A video section marked ``a=content:slides`` (RFC 4796) is a shared screen. aiortc's
  parser drops the attribute, so it is read from the text (:func:`slides_sections`)
  and written by clients that share one (:func:`mark_slides`).
- aiortc offers every codec and RTP header extension under its own fixed numbers (opus
  96, VP8 97, RTX 98; ``sdes:mid`` 1...), also when it renegotiates a connection whose
  numbers were set by the browser's first offer (Chrome: opus 111, VP8 96...). A
  browser refuses an offer that renumbers a negotiated extension ("RTP extension ID
  reassignment not supported"), and a payload type that changes meaning mid-call
  leaves each side unable to read the other. :class:`Numbering` keeps the numbers of
  the client's first offer and rewrites the server's later offers to them; the
  client's answer then carries them back, and aiortc takes a codec's payload type and
  an extension's id from the remote side, so what it sends and expects agrees with
  what the browser negotiated (``aiortc.rtcpeerconnection.find_common_codecs``).
- A browser that has no camera permission yet hides its addresses behind mDNS names
  (``<uuid>.local``), which only its own network can resolve: never the server's.
  aioice tries anyway, and when every candidate of an offer is such a name and the
  offer says ``a=end-of-candidates``, it drops the ICE component for want of remote
  candidates: the server then gathers none of its own, answers with no candidates and
  can never connect. :func:`reachable_candidates` takes those names out (and the
  end-of-candidates of a section left with none), so the server answers with its own
  candidates and connects through the peer-reflexive candidate the browser's first
  check makes (RFC 8445 7.3.1.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: The attribute that marks a video section as a shared screen.
SLIDES = "a=content:slides"

_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^\s/]+/\d+)", re.MULTILINE)
_APT = re.compile(r"^a=fmtp:(\d+) .*\bapt=(\d+)", re.MULTILINE)
_EXTMAP = re.compile(r"^a=extmap:(\d+)(/\w+)? (\S+)(.*)$")
_PT_LINE = re.compile(r"^a=(rtpmap|fmtp|rtcp-fb):(\d+)(.*)$")
_M_LINE = re.compile(r"^(m=\S+ \S+ \S+)((?: \d+)*)$")


def sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    """The session lines and each m-section's lines."""
    session: list[str] = []
    media: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def join(session: list[str], media: list[list[str]]) -> str:
    return "\r\n".join([*session, *(line for section in media for line in section)]) + "\r\n"


def slides_sections(sdp: str) -> set[int]:
    """Indexes of the m-sections carrying ``a=content:slides``."""
    return {i for i, section in enumerate(sections(sdp)[1]) if any(line.strip() == SLIDES for line in section)}


def mark_slides(sdp: str, mid: str) -> str:
    """``sdp`` with the section of ``mid`` marked as a screen, as a page marks the
    transceiver of its ``getDisplayMedia`` track."""
    session, media = sections(sdp)
    for section in media:
        if f"a=mid:{mid}" in (line.strip() for line in section):
            section.append(SLIDES)
    return join(session, media)


def is_mdns_candidate(candidate: str) -> bool:
    """Whether an ``a=candidate`` line (or its value) names its address by mDNS."""
    fields = candidate.split()
    return len(fields) > 4 and fields[4].lower().rstrip(".").endswith(".local")


def reachable_candidates(sdp: str) -> str:
    """``sdp`` without mDNS candidates; a section left with no candidate loses its
    ``a=end-of-candidates`` too, so ICE waits for the browser's checks."""
    session, media = sections(sdp)
    for index, section in enumerate(media):
        kept = [line for line in section if not (line.startswith("a=candidate:") and is_mdns_candidate(line))]
        if not any(line.startswith("a=candidate:") for line in kept):
            kept = [line for line in kept if line.strip() != "a=end-of-candidates"]
        media[index] = kept
    return join(session, media)


def _codecs(section_text: str) -> dict[str, int]:
    """A section's codecs by name (``opus/48000``; RTX as ``rtx:<its codec>``) -> payload type."""
    names = {int(pt): name.lower() for pt, name in _RTPMAP.findall(section_text)}
    found: dict[str, int] = {}
    for pt, name in names.items():
        if name.startswith("rtx/"):
            continue
        found.setdefault(name, pt)
    for pt, apt in _APT.findall(section_text):
        if names.get(int(pt), "").startswith("rtx/") and int(apt) in names:
            found.setdefault("rtx:" + names[int(apt)], int(pt))
    return found


@dataclass
class Numbering:
    """The payload types (per kind) and extension ids a client's first offer chose."""

    codecs: dict[str, dict[str, int]] = field(default_factory=dict)
    extensions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, offer: str) -> "Numbering":
        numbering = cls()
        for section in sections(offer)[1]:
            kind = section[0][2:].split(" ", 1)[0]
            text = "\n".join(section)
            for name, pt in _codecs(text).items():
                numbering.codecs.setdefault(kind, {}).setdefault(name, pt)
            for line in section:
                match = _EXTMAP.match(line.strip())
                if match:
                    numbering.extensions.setdefault(match.group(3), int(match.group(1)))
        return numbering

    def apply(self, sdp: str) -> str:
        """The server's ``sdp`` renumbered to the client's choices; a codec or an
        extension the client never offered is left out."""
        session, media = sections(sdp)
        kept = [line for line in map(self._extension, session) if line is not None]
        return join(kept, [self._section(section) for section in media])

    def _extension(self, line: str) -> str | None:
        match = _EXTMAP.match(line.strip())
        if match is None:
            return line
        wanted = self.extensions.get(match.group(3))
        if wanted is None:
            return None
        return f"a=extmap:{wanted}{match.group(2) or ''} {match.group(3)}{match.group(4)}"

    def _section(self, section: list[str]) -> list[str]:
        kind = section[0][2:].split(" ", 1)[0]
        theirs = self.codecs.get(kind, {})
        mapping = {pt: theirs[name] for name, pt in _codecs("\n".join(section)).items() if name in theirs}
        out: list[str] = []
        for line in section:
            bare = line.strip()
            m_line = _M_LINE.match(bare)
            pt_line = _PT_LINE.match(bare)
            if m_line is not None:
                listed = [int(pt) for pt in m_line.group(2).split()]
                out.append(m_line.group(1) + "".join(f" {mapping[pt]}" for pt in listed if pt in mapping))
            elif pt_line is not None:
                pt = int(pt_line.group(2))
                if pt not in mapping:
                    continue
                rest = re.sub(r"\bapt=(\d+)", lambda m: f"apt={mapping.get(int(m.group(1)), m.group(1))}",
                              pt_line.group(3))
                out.append(f"a={pt_line.group(1)}:{mapping[pt]}{rest}")
            else:
                renamed = self._extension(line)
                if renamed is not None:
                    out.append(renamed)
        return out
