"""``batchgw webhooks`` on a gateway's database: an endpoint is added with its secret shown once, listed without
it, and removed; bad input is one line without a traceback."""

from __future__ import annotations

import pytest

from tests.conftest import GatewayProcess

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases


def test_add_list_and_remove_an_endpoint(gateway: GatewayProcess) -> None:
    added = gateway.cli(
        "webhooks", "add", "--team", "acme", "--url", "https://hooks.example.com/batches",
        "--event", "batch.completed", "--event", "batch.failed",
    ).stdout  # fmt: skip
    endpoint_id = added.split()[1]
    secret = added.split("signing secret (shown once): ")[1].strip()
    assert endpoint_id.startswith("we_") and secret.startswith("whsec_")
    assert "batch.completed, batch.failed" in added

    listed = gateway.cli("webhooks", "list", "--team", "acme").stdout
    assert endpoint_id in listed and "https://hooks.example.com/batches" in listed and "completed failed" in listed
    assert secret not in listed and "delivered 0" in listed

    assert f"deleted {endpoint_id}" in gateway.cli("webhooks", "rm", endpoint_id).stdout
    assert endpoint_id not in gateway.cli("webhooks", "list").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("webhooks", "add", "--team", "acme", "--url", "ftp://x"), "'url' must be an http(s) URL"),
        (("webhooks", "add", "--team", "acme", "--url", "https://x.example", "--event", "batch.done"), "event_types"),
        (("webhooks", "rm", "we_nope"), "no endpoint 'we_nope'"),
        (("webhooks", "list", "--team", "nobody"), "no team named 'nobody'"),
        (("webhooks", "add", "--team", "", "--url", "https://x.example"), "'team' must be a non-empty string"),
        (("webhooks", "add", "--team", "a\tb", "--url", "https://x.example"), "'team' contains a control character"),
    ],
)
def test_bad_input_is_one_line_without_a_traceback(
    gateway: GatewayProcess, args: tuple[str, ...], message: str
) -> None:
    run = gateway.cli(*args, check=False)
    assert run.returncode in (1, 2) and message in " ".join(run.stderr.split()), run.stderr
    assert "Traceback" not in run.stderr
