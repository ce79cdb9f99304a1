"""Untrusted text from outside: headers, JSON strings, numbers in headers and queries.

Every string EVR takes from a client ends up somewhere that must encode it: the
database, the audit log's hash (UTF-8), a manifest, a log line. A header that is not
valid UTF-8 reaches aiohttp's handlers as lone surrogates (``surrogateescape``), and
JSON's ``\\ud800`` escape makes one too; either fails later, far from the request, as
``UnicodeEncodeError``. So text is checked or cleaned where it comes in, here, once:

- :func:`clean_header` for free text we only keep and show (a ``User-Agent``): never
  refused, made safe (replacement characters, no controls, bounded).
- :func:`parse_json` for JSON bodies and socket messages: too deep is malformed, and
  text that cannot be stored is refused (422) instead of failing after its change
  was made.
- :func:`parse_count` for numbers in headers, query strings and paths: ASCII digits
  only (``int()`` accepts ``²``-free but Arabic-Indic and other Unicode digits, and
  ``str.isdigit`` accepts ``²``, which ``int()`` then refuses), and bounded.
- :func:`typed_text` for a message a person typed for others (chat): controls but
  line breaks removed.
- :func:`strip_bidi` for names shown to staff (a file name with U+202E can make
  ``gpj.exe`` look like ``exe.jpg``).
"""

from __future__ import annotations

import re
from typing import Any, Optional

#: Bidirectional embedding, override and isolate controls (U+202A–202E, U+2066–2069).
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")
_SURROGATES = re.compile("[\ud800-\udfff]")
#: What no text column can keep: lone surrogates (not UTF-8) and NUL (PostgreSQL's
#: text refuses it; SQLite would keep it and the two back ends would disagree).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_CONTROLS = re.compile("[\x00-\x1f\x7f]")
_ASCII_DIGITS = re.compile(r"[0-9]+")


class TextError(ValueError):
    """Text or a number from outside that cannot be used; the message names where."""


#: Controls other than tab and line breaks: not text a person wrote; NUL cannot be
#: stored by PostgreSQL; with lone surrogates, what :func:`plain_text` refuses.
_NOT_PLAIN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_LINE_BREAKS = re.compile("[\n\r]")


def plain_text(value: str, multiline: bool = True) -> bool:
    """True when ``value`` is text a person wrote and every back end can store (a
    reason, a message, a search): no control characters but tab and, when
    ``multiline``, line breaks; no lone surrogates."""
    return not _NOT_PLAIN.search(value) and (multiline or not _LINE_BREAKS.search(value))


def strip_bidi(value: str) -> str:
    return BIDI_CONTROLS.sub("", value)


#: Controls a typed message keeps none of: C0 but the line feed, DEL and C1.
_CONTROLS_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def typed_text(value: str) -> str:
    """Text a person typed for others to read (a chat message), made plain: line
    breaks become ``\n``, every other control (tab included) and the bidi controls
    go, what no database can keep (a lone surrogate) becomes U+FFFD."""
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    return storable(_CONTROLS_BUT_NEWLINE.sub("", value))


def storable(value: str) -> str:
    """Free text from a file or a device (embedded metadata) made safe to keep and show
    to staff: what no database can keep (NUL, lone surrogates) becomes U+FFFD, bidi
    controls go; line breaks stay."""
    return _UNSTORABLE.sub("\ufffd", strip_bidi(value))


def clean_header(value: Optional[str], limit: int = 512) -> Optional[str]:
    """A header's text made safe to store and show: undecodable bytes (lone
    surrogates) and controls become U+FFFD, bidi controls go, at most ``limit``
    characters; ``None`` when nothing is left."""
    if not value:
        return None
    value = _SURROGATES.sub("\ufffd", value)
    value = _CONTROLS.sub("\ufffd", strip_bidi(value)).strip()
    return value[:limit] or None


#: Deeper JSON than this is refused (no request of EVR nests more than a few levels,
#: and code that walks a value recursively must not meet thousands).
MAX_JSON_DEPTH = 32


class JsonError(TextError):
    """A JSON document that cannot be used; ``code`` says why (for the API error)."""

    def __init__(self, code: str, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        #: Where in the document, as the API's ``fields`` name it (``victim.name``,
        #: ``exhibits[0].upload_id``), when one value is to blame.
        self.field = field


def parse_json(text: str) -> Any:
    """Parse JSON from outside: :class:`JsonError` ``malformed_json`` for what is not
    JSON (or nests past :data:`MAX_JSON_DEPTH`: Python's parser recurses, and 30,000
    levels raise ``RecursionError``), ``unencodable_text`` for a string or key that
    cannot be stored (a lone surrogate such as ``"\\ud800"``, or a NUL)."""
    import json

    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonError("malformed_json", f"The JSON nests deeper than {MAX_JSON_DEPTH} levels.") from None
    except ValueError:
        raise JsonError("malformed_json", "The body is not valid JSON.") from None
    problem = check_json(value)
    if problem:
        raise problem
    return value


def check_json(value: Any) -> Optional[JsonError]:
    """What is wrong with an already parsed value (too deep, unencodable text), or
    None. Iterative: safe on any depth."""
    stack: list[tuple[Any, str, int]] = [(value, "$", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return JsonError("unencodable_text", f"{path} holds text that cannot be stored "
                                                     "(a NUL, or not valid Unicode).", path[2:] or None)
        elif isinstance(item, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                return JsonError("malformed_json", f"The JSON nests deeper than {MAX_JSON_DEPTH} levels.")
            if isinstance(item, dict):
                for key, child in item.items():
                    if _UNSTORABLE.search(key):
                        return JsonError("unencodable_text", f"A key in {path} cannot be stored.")
                    stack.append((child, f"{path}.{key[:40]}", depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
    return None


def parse_count(value: Optional[str], name: str, maximum: int = 2**63 - 1) -> int:
    """A non-negative integer from a header, query parameter or path: ASCII digits
    only, at most ``maximum``; :class:`TextError` naming ``name`` otherwise."""
    if value is None or not _ASCII_DIGITS.fullmatch(value) or len(value) > 19:
        raise TextError(f"{name} must be a whole number written with the digits 0-9.")
    number = int(value)
    if number > maximum:
        raise TextError(f"{name} must be at most {maximum}.")
    return number
