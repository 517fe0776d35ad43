"""Logging of the gateway's processes: one record per line, whatever a client sent.

Messages may quote client input (an id, a file name), so no record may contain a line break or
another control character that a reader would take for the start of a new record:

* ``text`` (the default): ``time level logger: message``; control characters in the message are
  escaped (``\\n``, ``\\x00``, ``\\u2028``), and a traceback's lines are indented, so every line
  that starts at column 0 begins a record.
* ``json``: one JSON object per line (``time``, ``level``, ``logger``, ``message``, and
  ``exception`` with the traceback), in ASCII: the encoding escapes every control character.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

    from gateway.settings import Settings

    ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TRACEBACK_INDENT = "    | "

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape_control(text: str) -> str:
    """``text`` with every control character (and Unicode line separator) written as an escape."""
    return _UNSAFE.sub(_escape, text)


class SafeTextFormatter(logging.Formatter):
    """The text format, with control characters escaped and tracebacks indented."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_control(super().formatMessage(record))

    def formatException(self, ei: ExcInfo) -> str:
        return _indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indent(stack_info)


def _indent(block: str) -> str:
    return "\n".join(TRACEBACK_INDENT + escape_control(line) for line in block.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ASCII only: C1 controls and Unicode line separators are escaped too, not just those below 0x20.
        return json.dumps(entry, ensure_ascii=True, default=str)


def configure_logging(settings: Settings) -> None:
    """Send every logger's records to stderr in the configured format and level.

    Replaces handlers installed earlier on the root logger, so calling it twice is harmless. The
    HTTP server's loggers propagate to the root logger, so its lines share the format.
    """
    install_handler(settings.log_format, settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True


def install_handler(log_format: str, log_level: str) -> None:
    """The root logger's one handler: stderr in ``log_format`` (``text`` or ``json``) at ``log_level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else SafeTextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(log_level.upper())
