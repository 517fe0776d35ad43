"""Error hygiene: what a provider says, made short and safe before it reaches an exception, a log or a client.

Keys, masked keys and fragments of the configured key become ``***``; the provider's URLs and host
become its configured name.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import msgspec

__all__ = ["DETAIL_LIMIT", "error_message_from_body", "sanitise", "shorten"]

DETAIL_LIMIT = 300
"""Characters of a provider's error message kept in an exception."""
REDACTED = "***"


def error_message_from_body(body: bytes, *, limit: int | None = DETAIL_LIMIT) -> str:
    """The human message of an error answer (``{"error": {"message"}}`` of OpenAI, Anthropic and
    Google, and common variants), else the body as text; shortened to ``limit`` characters."""
    message: object = None
    try:
        obj = msgspec.json.decode(body)
    except msgspec.DecodeError:
        obj = None
    if isinstance(obj, dict):
        error = obj.get("error")
        if isinstance(error, dict):
            message = error.get("message") or error.get("code")
        elif isinstance(error, str):
            message = error
        message = message or obj.get("message") or obj.get("detail")
    if not isinstance(message, str) or not message:
        message = body.decode("utf-8", "replace").strip()
    return shorten(" ".join(message.split()), limit)


def shorten(text: str, limit: int | None = DETAIL_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, marked with ``...`` when cut."""
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


_AUTH_VALUE = re.compile(r"(?i)\b(bearer|basic)\s+\S+")
_URL = re.compile(r"(?i)\b(?:https?|wss?)://[^\s\"'<>()\[\]{}]+")
_KEY_PREFIX = r"\b(?:sk|pk|rk|gsk|xai|sess)[-_]"
_KEY_LIKE = re.compile(
    rf"{_KEY_PREFIX}[A-Za-z0-9_\-]{{16,}}"  # prefixed keys (OpenAI, Anthropic, Groq, xAI...)
    rf"|{_KEY_PREFIX}[\w\-]*(?:\.\.\.|…)\w"  # the same, shortened with an ellipsis
    r"|AIza[0-9A-Za-z_\-]{20,}"  # Google API keys
)
_MASKED = re.compile(r"\w\S*?(?:\*{3,}|•{3,})|(?:\*{3,}|•{3,})\S*?\w")
_PUBLIC_PREFIX = re.compile(r"^(?:[a-z0-9]{1,6}[-_]){1,3}")
_EDGE = "\"'`()[]{}<>,.;:!?"
FRAGMENT = 4
"""Characters of the configured key that, found in a provider's message, count as a fragment of it."""
SANITISED_MAX = 4 * DETAIL_LIMIT
"""Characters of provider text sanitised at the most; the rest is dropped (an error page can be large)."""


def _key_grams(secret: str | None) -> frozenset[str]:
    """Every ``FRAGMENT``-long piece of the key's secret part (the key without a public prefix such as
    ``sk-proj-``, unless too little would remain)."""
    if not secret:
        return frozenset()
    private = secret[len(match.group()) :] if (match := _PUBLIC_PREFIX.match(secret)) else secret
    if len(private) < 2 * FRAGMENT:
        private = secret
    return frozenset(private[i : i + FRAGMENT] for i in range(len(private) - FRAGMENT + 1))


def _clean_word(word: str, grams: frozenset[str]) -> str:
    core = word.strip(_EDGE)
    if not core:
        return word
    keyish = _KEY_LIKE.search(core) or _MASKED.search(core)
    if keyish or any(core[i : i + FRAGMENT] in grams for i in range(len(core) - FRAGMENT + 1)):
        start = word.index(core)
        return f"{word[:start]}{REDACTED}{word[start + len(core) :]}"
    return word


def sanitise(text: str, *, provider: str, secret: str | None = None, base_url: str = "") -> str:
    """``text`` from a provider made safe for logs and clients.

    URLs and the host of ``base_url`` become ``provider``; credentials after ``Bearer``/``Basic``,
    anything shaped like an API key (masked forms such as ``sk-abc***xyz`` included) and every word
    holding a piece of ``secret`` at least :data:`FRAGMENT` characters long become ``***``. Text
    longer than :data:`SANITISED_MAX` is cut first, at a word boundary, so that no cut-off key stays.
    """
    if len(text) > SANITISED_MAX:
        head = text[:SANITISED_MAX]
        words = head.rsplit(None, 1)
        text = (words[0] if len(words) == 2 else head) + " ..."
    if secret:
        text = text.replace(secret, REDACTED)
    text = _AUTH_VALUE.sub(lambda match: f"{match.group(1)} {REDACTED}", text)
    text = _URL.sub(lambda match: provider + match.group()[len(match.group().rstrip(_EDGE)) :], text)
    parts = urlsplit(base_url)
    for host in (parts.netloc, parts.hostname or ""):
        if host and ("." in host or ":" in host):  # a bare name like "vllm" would also match ordinary words
            text = re.sub(re.escape(host), provider, text, flags=re.IGNORECASE)
    grams = _key_grams(secret)
    return "".join(part if part.isspace() else _clean_word(part, grams) for part in re.split(r"(\s+)", text))
