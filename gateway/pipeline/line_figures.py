"""What the check of an input file reads of each request for routing: its model, its body's size and its output
cap, 12 bytes a line, so that routing estimates the file without reading it again.

The check (:mod:`gateway.pipeline.input_lines`) decodes every line anyway; keeping these figures costs it a second
look at each body (its size is known only once it is cut out of its line, and its model and caps are read from it
then), and spares routing a pass of its own over the file. A clean file's figures are stored beside it (under
:func:`figures_key`, by the upload's check or else by validation) and routing estimates from them
(:func:`gateway.billing.estimate.estimate_figures`); a file without them, or whose figures do not match it, is
read again as before. Light imports: the check runs in a CPU process of its own.
"""

from __future__ import annotations

import logging
import operator
import sys
from array import array
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

if TYPE_CHECKING:
    from gateway.storage import BlobStore

log = logging.getLogger(__name__)

FIGURES_SUFFIX = ".figures"
FIGURES_VERSION = 1
"""Changes whenever what the figures hold does: figures of another version are not used."""
NO_CAP = 0
"""The cap of a request that sets none (a cap is a positive whole number)."""
_MOST = 2**32 - 1
"""The largest figure a line holds: a body or cap beyond it is held as this (no estimate tells them apart)."""


def output_cap(max_completion_tokens: Any, max_tokens: Any) -> int | None:
    """A request's own output cap: ``max_completion_tokens``, else ``max_tokens``, where a positive whole number."""
    for value in (max_completion_tokens, max_tokens):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class _PlainBody(msgspec.Struct, gc=False):
    """A body whose caps are absent or whole numbers: the usual request, read a block at a time."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class _AnyBody(msgspec.Struct, gc=False):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    max_tokens: Any = None
    max_completion_tokens: Any = None


_plain_body = msgspec.json.Decoder(_PlainBody)
_any_body = msgspec.json.Decoder(_AnyBody)
_MODEL = operator.attrgetter("model")
_COMPLETION_LIMIT = operator.attrgetter("max_completion_tokens")
_LIMIT = operator.attrgetter("max_tokens")


class BodyHeads:
    """The models and caps of a block of request bodies, decoded at once."""

    __slots__ = ("caps", "models", "one_model", "sizes")

    def __init__(self, bodies: Sequence[msgspec.Raw]) -> None:
        """Decode ``bodies`` (at least one); raises :class:`msgspec.ValidationError` or :class:`msgspec.DecodeError`
        when one is not an object naming a model (the caller then checks its lines one by one)."""
        try:
            heads: list[Any] = list(map(_plain_body.decode, bodies))
        except msgspec.ValidationError:  # a cap of another type (a float, a string): read loosely
            heads = list(map(_any_body.decode, bodies))
        self.models: list[str] = list(map(_MODEL, heads))
        self.one_model: str | None = self.models[0] if self.models.count(self.models[0]) == len(heads) else None
        """The model every body names, where they name one."""
        self.sizes: list[int] = list(map(len, bodies))
        self.caps: list[int] = output_caps(heads)


def output_caps(heads: Sequence[Any]) -> list[int]:
    """The output cap (:func:`output_cap`; :data:`NO_CAP`: none) of each decoded body head (anything with
    ``max_completion_tokens`` and ``max_tokens``), worked out once per distinct limit, not once per head."""
    completion = list(map(_COMPLETION_LIMIT, heads))
    limit = list(map(_LIMIT, heads))
    try:
        if completion.count(None) == len(completion):  # the usual block: max_tokens alone, or no cap
            by_limit = {value: output_cap(None, value) or NO_CAP for value in set(limit)}
            return list(map(by_limit.__getitem__, limit))
        pairs = list(zip(completion, limit, strict=True))
        by_pair = {pair: output_cap(*pair) or NO_CAP for pair in set(pairs)}
    except TypeError:  # an unhashable cap (a list): one by one
        return [output_cap(*pair) or NO_CAP for pair in zip(completion, limit, strict=True)]
    return list(map(by_pair.__getitem__, pairs))


class LineFigures:
    """Each request's model (an index into :attr:`names`), body size in bytes and output cap (:data:`NO_CAP`:
    none), in the file's order."""

    __slots__ = ("_index", "body_bytes", "caps", "name_of_line", "names")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.name_of_line = array("I")
        self.body_bytes = array("I")
        self.caps = array("I")
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.name_of_line)

    def add(self, heads: BodyHeads) -> None:
        """Record the next requests."""
        models = heads.models
        if heads.one_model is not None:
            self.name_of_line.extend(array("I", [self._name(heads.one_model)]) * len(models))
        else:
            self.name_of_line.extend([self._name(model) for model in models])
        for column, values in ((self.body_bytes, heads.sizes), (self.caps, heads.caps)):
            held = len(column)
            try:
                column.extend(values)
            except OverflowError:  # a figure beyond what a line holds: held as the most it holds
                del column[held:]
                column.extend([min(value, _MOST) for value in values])

    def _name(self, model: str) -> int:
        index = self._index.get(model)
        if index is None:
            index = self._index[model] = len(self.names)
            self.names.append(model)
        return index

    def to_bytes(self) -> bytes:
        """The figures as stored (numbers little-endian, whatever the machine)."""
        columns = [self.name_of_line, self.body_bytes, self.caps]
        if sys.byteorder != "little":
            columns = [array("I", column) for column in columns]
            for column in columns:
                column.byteswap()
        models, sizes, caps = (column.tobytes() for column in columns)
        return msgspec.msgpack.encode(_Stored(FIGURES_VERSION, self.names, models, sizes, caps))

    @classmethod
    def from_bytes(cls, data: bytes) -> LineFigures | None:
        """Figures as :meth:`to_bytes` stored them, or None when they are of another version or damaged."""
        try:
            stored = msgspec.msgpack.decode(data, type=_Stored)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        if stored.version != FIGURES_VERSION:
            return None
        figures = cls()
        columns = (figures.name_of_line, figures.body_bytes, figures.caps)
        for column, raw in zip(columns, (stored.models, stored.sizes, stored.caps), strict=True):
            if len(raw) % column.itemsize:
                return None
            column.frombytes(raw)
            if sys.byteorder != "little":
                column.byteswap()
        if not len(figures.body_bytes) == len(figures.caps) == len(figures):
            return None
        if figures.name_of_line and max(figures.name_of_line) >= len(stored.names):
            return None
        figures.names = list(stored.names)
        figures._index = {name: index for index, name in enumerate(figures.names)}
        return figures


class _Stored(msgspec.Struct, array_like=True):
    version: int
    names: list[str]
    models: bytes
    sizes: bytes
    caps: bytes


def figures_key(storage_key: str) -> str:
    """The blob beside a file's content that holds its requests' figures: it lives and goes with the file."""
    return storage_key + FIGURES_SUFFIX


async def store_figures(blobs: BlobStore, storage_key: str, figures: bytes) -> None:
    """Store the figures of a file's requests beside it. Figures that cannot be stored (a full disk, say) only
    cost routing a read of the file."""
    try:
        await blobs.write_stream(figures_key(storage_key), _one(figures))
    except OSError as exc:
        log.warning("the figures of a file's requests were not stored (%s); routing will read the file", exc)


async def read_figures(blobs: BlobStore, storage_key: str, line_count: int | None) -> LineFigures | None:
    """The stored figures of the file under ``storage_key`` when they describe its ``line_count`` requests; None
    for a file without them (one stored before figures were kept) or damaged ones."""
    from gateway.storage import BlobMissing  # here: the check's CPU process does not need the blob stores

    if line_count is None:
        return None
    try:
        data = b"".join([piece async for piece in blobs.iter_bytes(figures_key(storage_key))])
    except BlobMissing:
        return None
    except OSError as exc:  # a store that does not answer: the read of the file says what is wrong, if anything
        log.warning("the figures stored beside %s could not be read (%s); routing reads the file", storage_key, exc)
        return None
    figures = LineFigures.from_bytes(data)
    if figures is None or len(figures) != line_count:
        log.warning("the figures stored beside %s do not match it; routing reads the file", storage_key)
        return None
    return figures


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
