"""The redaction request's parser, fuzzed: any JSON gives either operations that stay
inside the recording and the frame, or a 422 naming what is wrong; never anything else."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evr.errors import ApiError
from evr.recording.operations import Box, Operations, Span, parse

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=30)
numbers = st.one_of(st.floats(-2, 2), st.sampled_from([math.nan, math.inf, -math.inf]), st.integers(-3, 3),
                    st.just(True), st.text(max_size=3))
span = st.fixed_dictionaries({"from": numbers, "to": numbers})
box_item = st.fixed_dictionaries(
    {"from": numbers, "to": numbers, "box": st.lists(numbers, min_size=0, max_size=5)},
    optional={"style": st.sampled_from(["blur", "mask", "sparkle", 3])})
bodies = st.fixed_dictionaries({}, optional={
    "mute": st.lists(span, max_size=4) | json_values, "blur": st.lists(box_item, max_size=4) | json_values,
    "blur_faces": st.booleans() | json_values, "faces": st.lists(span, max_size=2)})


@settings(max_examples=600, deadline=None)
@given(bodies, st.floats(0.5, 3.0), st.integers(16, 4000), st.integers(16, 4000))
def test_any_request_is_inside_the_recording_and_the_frame_or_a_clear_422(body, duration, width, height):
    try:
        ops = parse(body, duration)
    except ApiError as exc:
        assert exc.status == 422 and exc.code and exc.message and exc.extra.get("fields")
        return
    assert not ops.empty()
    for s in (*ops.mute, *(b.span for b in ops.boxes), *ops.faces):
        assert 0 <= s.start < s.end <= duration + 0.001 and math.isfinite(s.end)
    for b in ops.boxes:
        left, top, right, bottom = b.pixels(width, height)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert b.style in ("blur", "mask")
    # What the manifest keeps parses back to the same operations.
    assert parse(ops.json(), None) == ops


def test_a_box_never_covers_less_than_was_drawn():
    box = Box(Span(0, 1), 0.101, 0.2, 0.333, 0.25)
    left, top, right, bottom = box.pixels(640, 480)
    assert left <= 0.101 * 640 and right >= (0.101 + 0.333) * 640
    assert top <= 0.2 * 480 and bottom >= 0.45 * 480


def test_what_a_mute_covers():
    ops = Operations(mute=(Span(1.0, 2.0),))
    assert ops.muted(0.99, 1.01) and ops.muted(1.5, 1.52) and not ops.muted(2.0, 2.02) and not ops.muted(0.5, 1.0)


@pytest.mark.parametrize("body,code", [
    ({"mute": [{"from": 0, "to": 1}]}, "no_audio"),
])
def test_a_screen_has_no_sound_to_mute(body, code):
    with pytest.raises(ApiError) as caught:
        parse(body, 10.0, has_audio=False)
    assert caught.value.code == code
