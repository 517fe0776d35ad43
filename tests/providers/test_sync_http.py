"""Helpers shared by the synchronous adapters."""

from __future__ import annotations

import pytest

from gateway.providers.sync_http import json_object


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[1, 2]", b'"text"', b"[" * 5000 + b"]" * 5000, b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"],
)
def test_anything_but_a_readable_json_object_is_none(raw: bytes) -> None:
    assert json_object(raw) is None


def test_a_json_object_is_decoded() -> None:
    assert json_object(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
