"""custom_ids mapped to what a provider takes (Anthropic's pattern, Together's 64 characters) and back."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from gateway.translate.custom_ids import custom_id_of, provider_custom_id, reverse_custom_ids, with_custom_id


def test_custom_id_mapping() -> None:
    assert provider_custom_id("req-1_A") == "req-1_A"
    assert provider_custom_id("x" * 64) == "x" * 64
    for unsafe in ("with space", "x" * 65, "é", "a.b", "", "ok\n"):
        mapped = provider_custom_id(unsafe)
        assert mapped.startswith("m_") and len(mapped) == 42
    lookalike = provider_custom_id("with space")
    assert provider_custom_id(lookalike) != lookalike  # a client id shaped like a mapped id is mapped too


@given(st.lists(st.text(max_size=80), unique=True, max_size=30))
def test_id_mapping_round_trips(custom_ids: list[str]) -> None:
    reverse = reverse_custom_ids(custom_ids)
    sent = [provider_custom_id(c) for c in custom_ids]
    assert len(set(sent)) == len(sent)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", s) for s in sent), sent  # Anthropic's custom_id rule
    assert [reverse.get(s, s) for s in sent] == custom_ids


def test_a_lines_custom_id_is_read_and_replaced_alone() -> None:
    line = b'{"custom_id": "a b", "body": {"custom_id": "inner"}, "n": 1}'
    assert custom_id_of(line) == "a b"
    assert custom_id_of(b'{"custom_id": 7}') is None and custom_id_of(b"not json") is None
    assert custom_id_of(b"[1, 2]") is None
    assert with_custom_id(line, "m_1") == b'{"custom_id":"m_1","body":{"custom_id":"inner"},"n":1}'
