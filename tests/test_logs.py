"""``gateway.logs``: one record per line whatever a message holds, in text or JSON.

The formatters are checked on records directly; ``configure_logging`` in a fresh interpreter (it
replaces the root logger's handlers, which this test process's own log capture relies on); and a
real ``batchgw serve`` in JSON mode, whose every output line must be a JSON object.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import httpx
import pytest

from gateway.logs import TRACEBACK_INDENT, JsonFormatter, SafeTextFormatter, escape_control
from tests.conftest import GatewayProcess

HOSTILE = "file-\x00\n2026-01-01 00:00:00,000 ERROR gateway: FORGED\r\x1b[2J\x85\u2028end"


def record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("gateway.test", logging.ERROR, __file__, 1, message, args, exc_info)


def raised(message: str) -> BaseException:
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


def test_escape_control_writes_every_control_character_as_an_escape() -> None:
    assert escape_control("a\nb\rc\td\x00e\x1bf\x7fg\x85h\u2028i") == "a\\nb\\rc\\td\\x00e\\x1bf\\x7fg\\x85h\\u2028i"
    assert escape_control("plain é 漢字") == "plain é 漢字"


def test_a_text_record_is_one_line_whatever_the_message_holds() -> None:
    line = SafeTextFormatter().format(record("no such file %r or %s", HOSTILE, HOSTILE))
    assert len(line.splitlines()) == 1
    assert "ERROR gateway.test: no such file" in line
    assert "\\n2026-01-01" in line and "\\x00" in line and "\\u2028" in line


def test_a_traceback_is_indented_so_no_line_of_it_starts_a_record() -> None:
    text = SafeTextFormatter().format(record("failed on %s", HOSTILE, exc=raised(HOSTILE)))
    first, *rest = text.splitlines()
    assert first.count("ERROR gateway.test: failed on") == 1
    assert rest and all(line.startswith(TRACEBACK_INDENT) for line in rest)
    assert any("ValueError" in line for line in rest)


def test_a_json_record_is_one_ascii_line_that_decodes_to_the_message() -> None:
    line = JsonFormatter().format(record("failed on %s", HOSTILE, exc=raised(HOSTILE)))
    assert len(line.splitlines()) == 1 and line.isascii()
    entry = json.loads(line)
    assert entry["message"] == f"failed on {HOSTILE}"
    assert (entry["level"], entry["logger"]) == ("ERROR", "gateway.test")
    assert entry["time"].endswith("+00:00")
    assert "ValueError" in entry["exception"] and HOSTILE in entry["exception"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_configure_logging_sends_every_logger_through_the_format(log_format: str) -> None:
    script = textwrap.dedent(
        f"""
        import logging
        from gateway.logs import configure_logging
        from gateway.settings import Settings

        logging.basicConfig(format="OLD %(message)s")  # replaced, not doubled
        configure_logging(Settings(log_format={log_format!r}, log_level="INFO"))
        logging.getLogger("gateway.x").warning("id %s", {HOSTILE!r})
        logging.getLogger("uvicorn.error").info("server line")
        logging.getLogger("gateway.z").debug("quiet: below INFO")
        try:
            raise RuntimeError({HOSTILE!r})
        except RuntimeError:
            logging.getLogger("gateway.y").exception("boom")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    lines = done.stderr.splitlines()
    assert not any(line.startswith(("OLD", "2026-01-01", "FORGED")) for line in lines), lines
    assert "quiet" not in done.stderr
    if log_format == "json":
        entries = [json.loads(line) for line in lines]
        assert [e["logger"] for e in entries] == ["gateway.x", "uvicorn.error", "gateway.y"]
        assert entries[0]["message"] == f"id {HOSTILE}"
        assert HOSTILE in entries[2]["exception"]
    else:
        records = [line for line in lines if not line.startswith(TRACEBACK_INDENT)]
        assert [r.split(" ")[3] for r in records] == ["gateway.x:", "uvicorn.error:", "gateway.y:"]


def test_a_gateway_in_json_mode_writes_only_json_lines(gateway_factory: object) -> None:
    gateway: GatewayProcess = gateway_factory({"BATCHGW_LOG_FORMAT": "json"}).start()  # type: ignore[operator]
    key = gateway.create_key("acme")
    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        assert http.get("/v1/files/%00%0aFORGED").status_code == 400
        assert http.get("/v1/files/file-\u2028FORGED").status_code == 404
    gateway.stop()
    output = gateway.log().splitlines()
    banners = [line for line in output if line.startswith("batch-gateway listening on")]
    assert len(banners) == 1  # printed on stdout, not a log record
    entries = [json.loads(line) for line in output if line not in banners]
    assert {"uvicorn.error", "gateway.jobs.worker"} <= {e["logger"] for e in entries}
    assert all(set(e) >= {"time", "level", "logger", "message"} for e in entries)
