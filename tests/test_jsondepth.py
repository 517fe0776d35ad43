"""``gateway.jsondepth``: the nesting depth of a JSON text, measured on its bytes without decoding it."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.jsondepth import TOO_DEEP, TOO_DEEP_TEXT, capped, decode_within, nesting_depth, nests_deeper_than

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=st.sampled_from('ab[]{}"\\\x00\n:,é')),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=40,
)


def reference_depth(value: Any) -> int:
    """Depth of a decoded value: what a recursive decoder goes through."""
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES, ensure_ascii=st.booleans(), indent=st.sampled_from([None, 1]))
def test_depth_equals_the_decoded_values_depth(value: Any, ensure_ascii: bool, indent: int | None) -> None:
    raw = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent).encode()
    assert nesting_depth(raw) == reference_depth(value)
    for limit in range(0, 6):
        assert nests_deeper_than(raw, limit) == (reference_depth(value) > limit)


def test_malformed_texts_count_the_levels_a_decoder_would_enter() -> None:
    assert nesting_depth(b"[" * 1000) == 1000
    assert nesting_depth(b"]]]][[") == 0
    assert nesting_depth(b'["unterminated [[[[') == 1
    assert nesting_depth(b'"\\"[[[' + b"[" * 10) == 0


def test_a_megabyte_of_brackets_is_measured_in_well_under_a_second() -> None:
    hostile = [b"[" * 2**20, b"[" * 2**19 + b"]" * 2**19, b'"' + b'\\"' * 2**19, b'{"a":' * 200_000]
    started = time.perf_counter()
    depths = [nesting_depth(raw) for raw in hostile]
    assert depths == [2**20, 2**19, 0, 200_000]
    assert time.perf_counter() - started < 2.0


def test_capped_replaces_only_what_starts_deeper_than_the_limit_and_ignores_brackets_in_strings() -> None:
    shallow = b'{"a": [1, {"b": "[[[{{{"}], "c": "\\"]"}'
    assert capped(shallow, 3) == shallow  # nothing is deeper than 3
    assert capped(b'{"a":[1,[2,[3]]],"s":"[[["}', 2) == b'{"a":[1,' + TOO_DEEP + b'],"s":"[[["}'
    assert msgspec.json.decode(capped(b"[[[[1]]], 2]", 1)) == [TOO_DEEP_TEXT, 2]


def test_an_answer_too_deep_to_decode_is_read_with_its_deep_part_cut_and_says_so() -> None:
    poison = b"[" * 5000 + b"]" * 5000
    raw = b'{"results": [{"id": 1}, {"id": 2, "body": ' + poison + b'}, {"id": 3}]}'
    with pytest.raises(RecursionError):
        msgspec.json.decode(raw)
    answer, cut = decode_within(msgspec.json.decode, raw)
    assert cut and [item["id"] for item in answer["results"]] == [1, 2, 3]
    first, cut_one = (msgspec.json.encode(item) for item in answer["results"][:2])
    assert TOO_DEEP in cut_one and TOO_DEEP not in first
    assert decode_within(msgspec.json.decode, b'{"a": [1]}') == ({"a": [1]}, False)
