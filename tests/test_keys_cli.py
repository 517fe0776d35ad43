"""``batchgw keys`` on a running gateway's database: a key made with a lifetime is listed with its expiry and
never its secret, works against the API until revoked from the command line, and bad input is one line."""

from __future__ import annotations

import time

import openai
import pytest

from tests.conftest import GatewayProcess

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases


def test_create_list_and_revoke_from_the_command_line(gateway: GatewayProcess) -> None:
    secret = gateway.cli("keys", "create", "--team", "wayne", "--name", "etl", "--expires-in", "30d").stdout.strip()
    client = gateway.client(secret)
    client.files.list()

    listed = gateway.cli("keys", "list", "--team", "wayne").stdout
    [row] = [line for line in listed.splitlines() if "wayne" in line]
    key_id = row.split()[1]
    assert key_id.startswith("key_") and secret[:10] in row and "etl" in row and "active" in row
    expiry = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 30 * 86400))
    assert expiry in row and secret not in listed

    revoked = gateway.cli("keys", "revoke", key_id)
    assert f"revoked {key_id}" in revoked.stdout
    with pytest.raises(openai.AuthenticationError) as caught:
        client.files.list()
    assert caught.value.code == "api_key_revoked"
    assert "already revoked" in gateway.cli("keys", "revoke", key_id).stdout
    assert key_id not in gateway.cli("keys", "list", "--team", "wayne").stdout
    assert "revoked" in gateway.cli("keys", "list", "--team", "wayne", "--all").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("keys", "create", "--team", "wayne", "--expires-in", "5y"), "use a duration such as 90m, 12h, 30d or 8w"),
        (("keys", "create", "--team", "wayne", "--expires-in", "0d"), "use a duration such as 90m, 12h, 30d or 8w"),
        (("keys", "revoke", "key_nope"), "no key 'key_nope'"),
        (("keys", "list", "--team", "nobody"), "no team named 'nobody'"),
        (("keys", "create", "--team", " "), "'team' must be a non-empty string of at most 200 characters."),
        (("keys", "create", "--team", "a\nb"), "'team' contains a control character"),
        (("keys", "create", "--team", "wayne", "--name", "x" * 201), "'name' must be a string of at most 200"),
    ],
)
def test_bad_input_is_one_line_without_a_traceback(
    gateway: GatewayProcess, args: tuple[str, ...], message: str
) -> None:
    run = gateway.cli(*args, check=False)
    assert run.returncode in (1, 2) and message in " ".join(run.stderr.split()), run.stderr
    assert "Traceback" not in run.stderr
