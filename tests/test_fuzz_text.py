"""Property-based tests of evr.text, the one place untrusted text and numbers come in:
whatever a client sends, the parsers answer with a value or their own error, never
another exception, and what they let through can be stored (encoded as UTF-8,
hashed into the audit log)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from evr.text import MAX_JSON_DEPTH, JsonError, TextError, check_json, clean_header, parse_count, parse_json

FAST = settings(max_examples=300, deadline=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@FAST
@given(st.text())
def test_parse_json_on_any_text(text: str) -> None:
    try:
        value = parse_json(text)
    except JsonError as exc:
        assert exc.code in ("malformed_json", "unencodable_text")
        return
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # storable


@FAST
@given(json_values)
def test_parse_json_round_trips_storable_values(value: object) -> None:
    text = json.dumps(value)
    try:
        parsed = parse_json(text)
    except JsonError as exc:
        # Only a lone surrogate (st.text() makes them) may be refused here.
        assert exc.code == "unencodable_text"
        return
    assert parsed == value or text == json.dumps(parsed)


@FAST
@given(st.integers(min_value=1, max_value=5000), st.booleans())
def test_depth_is_bounded_without_recursion(depth: int, objects: bool) -> None:
    body = '{"k":' * depth + "null" + "}" * depth if objects else "[" * depth + "]" * depth
    try:
        parse_json(body)
    except JsonError as exc:
        assert exc.code == "malformed_json"
        assert depth > MAX_JSON_DEPTH
    else:
        assert depth <= MAX_JSON_DEPTH


def test_check_json_is_iterative() -> None:
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    problem = check_json(deep)
    assert problem is not None and problem.code == "malformed_json"


@FAST
@given(st.text())
def test_parse_count_takes_only_ascii_digits(text: str) -> None:
    try:
        number = parse_count(text, "Upload-Offset")
    except TextError as exc:
        assert "Upload-Offset" in str(exc)
        assert not (text.isascii() and text.isdigit() and len(text) <= 18)
        return
    assert text.isascii() and text.isdigit() and number == int(text)


def test_parse_count_refuses_what_int_would_take() -> None:
    for text in ("²", "٣", "１２", "+5", "-1", " 5", "5 ", "1_000", "9" * 20, ""):
        try:
            parse_count(text, "n")
        except TextError:
            continue
        raise AssertionError(f"{text!r} was accepted")
    assert parse_count("18446744073709551615"[:19], "n", maximum=2**63 - 1) == 1844674407370955161


@FAST
@given(st.text())
def test_clean_header_is_always_storable(text: str) -> None:
    cleaned = clean_header(text)
    if cleaned is None:
        return
    cleaned.encode("utf-8")
    assert len(cleaned) <= 512
    assert not any(ord(c) < 32 or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069 for c in cleaned)


def test_nul_is_unstorable_anywhere() -> None:
    """PostgreSQL's text keeps no NUL: it failed requests after their checks (a 500)."""
    for body in ('{"reason": "a\\u0000b"}', '{"a\\u0000": 1}', '[["\\u0000"]]'):
        try:
            parse_json(body)
        except JsonError as exc:
            assert exc.code == "unencodable_text"
        else:
            raise AssertionError(body)
