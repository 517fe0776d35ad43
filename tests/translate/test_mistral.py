"""OpenAI request bodies -> Mistral's: renamed, dropped and refused fields, roles, embeddings."""

from __future__ import annotations

import pytest

from gateway.translate import TranslationError
from gateway.translate.mistral import REFUSED, chat_to_mistral, embeddings_to_mistral, to_mistral

MESSAGES = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_chat_fields_are_renamed_dropped_or_passed_through() -> None:
    body = {
        "model": "mistral-small", "messages": MESSAGES, "max_completion_tokens": 20, "seed": 7, "temperature": 0.2,
        "top_p": 0.9, "stop": ["\n"], "store": True, "service_tier": "auto", "user": "u-1", "metadata": {"a": "b"},
        "response_format": {"type": "json_object"}, "logprobs": False, "safety_identifier": "hash-1",
    }  # fmt: skip
    assert chat_to_mistral(body) == {
        "model": "mistral-small",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 20, "random_seed": 7, "temperature": 0.2, "top_p": 0.9, "stop": ["\n"],
        "response_format": {"type": "json_object"},
    }  # fmt: skip


@pytest.mark.parametrize("field", sorted(REFUSED))
def test_settings_mistral_cannot_honour_are_refused_by_name(field: str) -> None:
    with pytest.raises(TranslationError) as refused:
        chat_to_mistral({"model": "m", "messages": MESSAGES, field: True})
    assert refused.value.param == field and "not supported by this provider" in refused.value.message


def test_an_unknown_role_is_refused_with_its_position() -> None:
    with pytest.raises(TranslationError) as refused:
        chat_to_mistral({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "function"}]})
    assert refused.value.param == "messages[1].role"


def test_embeddings_take_output_dimension_and_refuse_the_rest() -> None:
    assert embeddings_to_mistral({"model": "e", "input": ["a"], "dimensions": 8, "user": "u"}) == {
        "model": "e", "input": ["a"], "output_dimension": 8,
    }  # fmt: skip
    with pytest.raises(TranslationError) as refused:
        to_mistral("/v1/embeddings", {"model": "e", "input": "a", "truncate": True})
    assert refused.value.param == "truncate"
