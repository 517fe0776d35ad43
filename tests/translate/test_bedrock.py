"""OpenAI bodies -> Bedrock model families' InvokeModel bodies, and their answers back."""

from __future__ import annotations

import base64
import struct

import pytest

from gateway.translate import MalformedResult, TranslationError, vectors_as_base64
from gateway.translate.bedrock import (
    ANTHROPIC_VERSION,
    CHAT,
    EMBEDDINGS,
    family_of,
    from_model_output,
    record_error_status,
    to_model_input,
)

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
TITAN = "amazon.titan-embed-text-v2:0"
COHERE_V3 = "cohere.embed-english-v3"
COHERE_V4 = "us.cohere.embed-v4:0"


@pytest.mark.parametrize(
    ("model", "family"),
    [
        (CLAUDE, "anthropic"),
        ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "anthropic"),
        ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic"),
        ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.anthropic.claude-3-haiku", "anthropic"),
        (TITAN, "titan-embed"),
        ("meta.llama3-70b-instruct-v1:0", None),
        (COHERE_V3, "cohere-embed-v3"),
        ("cohere.embed-multilingual-v3", "cohere-embed-v3"),
        ("cohere.embed-v4:0", "cohere-embed-v4"),
        (COHERE_V4, "cohere-embed-v4"),
        ("cohere.command-r-v1:0", None),
        ("amazon.nova-lite-v1:0", None),
    ],
)
def test_families_are_found_by_model_id_with_or_without_a_profile_prefix(model: str, family: str | None) -> None:
    found = family_of(model)
    assert (found.name if found else None) == family


def test_claude_bodies_are_anthropic_messages_with_bedrocks_version_and_no_model() -> None:
    family = family_of(CLAUDE)
    assert family is not None
    body = {
        "model": CLAUDE,
        "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_completion_tokens": 30,
        "stop": "\n",
        "user": "u-1",
    }
    record = to_model_input(family, CHAT, body)
    assert record == {
        "anthropic_version": ANTHROPIC_VERSION,
        "max_tokens": 30,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}],
        "stop_sequences": ["\n"],
    }


def test_a_claude_body_anthropic_cannot_take_is_refused_by_the_shared_translation() -> None:
    family = family_of(CLAUDE)
    assert family is not None
    with pytest.raises(TranslationError) as refused:
        to_model_input(family, CHAT, {"messages": [{"role": "user", "content": "x"}], "logprobs": True})
    assert refused.value.param == "logprobs"


def test_a_claude_answer_becomes_a_chat_completion_with_its_usage() -> None:
    family = family_of(CLAUDE)
    assert family is not None
    message = {
        "id": "msg_bdrk_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-haiku-20240307",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 3},
    }
    answer = from_model_output(family, message, CLAUDE, 1_700_000_000)
    assert answer["choices"][0]["message"]["content"] == "Hello"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert (answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]) == (12, 3)
    with pytest.raises(MalformedResult):
        from_model_output(family, {"content": []}, CLAUDE, 0)


def test_titan_takes_one_text_and_its_dimensions() -> None:
    family = family_of(TITAN)
    assert family is not None
    assert to_model_input(family, EMBEDDINGS, {"model": TITAN, "input": ["one text"], "dimensions": 256}) == {
        "inputText": "one text",
        "dimensions": 256,
    }
    for bad, param in (
        ({"input": ["a", "b"]}, "input"),
        ({"input": [1, 2, 3]}, "input"),
        ({"input": "a", "dimensions": 300}, "dimensions"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "normalize_to": 1}, "normalize_to"),
    ):
        with pytest.raises(TranslationError) as refused:
            to_model_input(family, EMBEDDINGS, bad)
        assert refused.value.param == param


def test_a_family_refuses_the_other_endpoint() -> None:
    titan = family_of(TITAN)
    assert titan is not None
    with pytest.raises(TranslationError, match="do not serve /v1/chat/completions"):
        to_model_input(titan, CHAT, {"messages": []})


def test_a_titan_answer_becomes_an_embeddings_list_in_float_or_base64() -> None:
    family = family_of(TITAN)
    assert family is not None
    answer = from_model_output(family, {"embedding": [0.5, -1.0], "inputTextTokenCount": 4}, TITAN, 0)
    assert answer["data"] == [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}]
    assert answer["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    packed = vectors_as_base64(answer, "Titan")["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(packed)) == (0.5, -1.0)


def test_cohere_bodies_carry_every_text_of_a_request_with_an_input_type() -> None:
    v3, v4 = family_of(COHERE_V3), family_of(COHERE_V4)
    assert v3 is not None and v4 is not None
    assert to_model_input(v3, EMBEDDINGS, {"model": COHERE_V3, "input": "one", "user": "u"}) == {
        "texts": ["one"], "input_type": "search_document",
    }  # fmt: skip
    asked = {"input": ["a", "b"], "input_type": "search_query", "dimensions": 512, "encoding_format": "base64"}
    assert to_model_input(v4, EMBEDDINGS, asked) == {
        "texts": ["a", "b"], "input_type": "search_query", "output_dimension": 512,
    }  # fmt: skip
    titan = family_of(TITAN)
    assert v3.counts_in_manifest and v4.counts_in_manifest and titan is not None and not titan.counts_in_manifest


@pytest.mark.parametrize(
    ("model", "bad", "param"),
    [
        (COHERE_V3, {"input": "a", "dimensions": 512}, "dimensions"),  # v3's vectors have one size
        (COHERE_V4, {"input": "a", "dimensions": 300}, "dimensions"),
        (COHERE_V4, {"input": "a", "dimensions": [512]}, "dimensions"),  # not a number: a 400 line, not a crash
        (TITAN, {"input": "a", "dimensions": [512]}, "dimensions"),
        (COHERE_V4, {"input": "a", "input_type": "image"}, "input_type"),
        (COHERE_V4, {"input": ["a", ""]}, "input"),
        (COHERE_V4, {"input": [[1, 2]]}, "input"),
        (COHERE_V4, {"input": ["t"] * 97}, "input"),
        (COHERE_V4, {"input": "a", "encoding_format": "int8"}, "encoding_format"),
        (COHERE_V3, {"input": "a", "truncate": "END"}, "truncate"),
        (COHERE_V3, {"input": ["short", "x" * 2049]}, "input"),  # v3's per-text limit; v4 has none
    ],
)
def test_cohere_refuses_what_it_cannot_run_naming_the_field(model: str, bad: dict[str, object], param: str) -> None:
    family = family_of(model)
    assert family is not None
    with pytest.raises(TranslationError) as refused:
        to_model_input(family, EMBEDDINGS, bad)
    assert refused.value.param == param


@pytest.mark.parametrize(
    "embeddings", [[[0.5, -1.0], [0.25, 0.0]], {"float": [[0.5, -1.0], [0.25, 0.0]], "int8": [[64, -127], [32, 0]]}]
)
def test_a_cohere_answer_in_either_shape_becomes_an_embeddings_list_without_usage(embeddings: object) -> None:
    family = family_of(COHERE_V3)
    assert family is not None
    output = {"id": "x", "texts": ["a", "b"], "embeddings": embeddings, "response_type": "embeddings_floats"}
    answer = from_model_output(family, output, COHERE_V3, 0)
    assert [item["embedding"] for item in answer["data"]] == [[0.5, -1.0], [0.25, 0.0]]
    assert [item["index"] for item in answer["data"]] == [0, 1] and "usage" not in answer  # priced from the manifest
    billed = from_model_output(family, {**output, "meta": {"billed_units": {"input_tokens": 7}}}, COHERE_V3, 0)
    assert billed["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    for meta in ("x", [1], {"billed_units": 5}, {"billed_units": {"input_tokens": "7"}}):
        assert "usage" not in from_model_output(family, {**output, "meta": meta}, COHERE_V3, 0)
    with pytest.raises(MalformedResult, match="without float embeddings"):
        from_model_output(family, {"embeddings": {"int8": [[1]]}}, COHERE_V3, 0)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ({"errorCode": 400, "errorMessage": "bad request"}, 400),
        ({"errorCode": "429", "errorMessage": "slow down"}, 429),
        ({"errorCode": 200, "errorMessage": "odd"}, 500),
        ({"errorCode": "x"}, 500),
        (None, 500),
    ],
)
def test_record_errors_keep_a_plausible_status(error: object, status: int) -> None:
    found, message = record_error_status(error)
    assert found == status and message
