"""OpenAI embeddings requests <-> Gemini EmbedContentRequest / SingleEmbedContentResponse."""

from __future__ import annotations

import pytest

from gateway.translate import MalformedResult, TranslationError
from gateway.translate.gemini_embeddings import embedding_to_gemini, gemini_to_embedding


def test_one_text_becomes_one_content_and_dimensions_its_output_dimensionality() -> None:
    body = {"model": "gemini-embedding-001", "input": ["a text"], "dimensions": 256, "user": "u-1"}
    assert embedding_to_gemini(body) == {"content": {"parts": [{"text": "a text"}]}, "outputDimensionality": 256}
    assert embedding_to_gemini({"input": "plain", "encoding_format": "base64"}) == {
        "content": {"parts": [{"text": "plain"}]}
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ["one", "two"]}, "input"),  # Gemini embeds one content per request
        ({"input": [1, 2, 3]}, "input"),  # token arrays have no Gemini equivalent
        ({"input": ""}, "input"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": True}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "truncate": "END"}, "truncate"),
    ],
)
def test_what_gemini_cannot_embed_is_refused_naming_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(TranslationError) as refused:
        embedding_to_gemini(body)
    assert refused.value.param == param


def test_an_answer_becomes_an_embeddings_list_priced_by_its_token_count() -> None:
    answer = gemini_to_embedding({"embedding": {"values": [0.25, -0.5]}, "tokenCount": 3}, model="gemini-embedding-001")
    assert answer == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
        "model": "gemini-embedding-001",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    assert (
        gemini_to_embedding({"embedding": {"values": []}, "tokenCount": "12"}, model="m")["usage"]["prompt_tokens"]
        == 12
    )
    with pytest.raises(MalformedResult, match="tokenCount"):
        gemini_to_embedding({"embedding": {"values": [0.1]}}, model="m")
    with pytest.raises(MalformedResult):
        gemini_to_embedding({"tokenCount": 3}, model="m")
