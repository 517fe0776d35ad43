"""``gateway.jsondepth``: the nesting depth of a JSON text, measured on its bytes without decoding it."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.jsondepth import nesting_depth, nests_deeper_than

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
