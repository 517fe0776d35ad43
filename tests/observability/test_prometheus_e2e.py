"""A real Prometheus server scrapes a real gateway on loopback, loads the repository's alert rules, and the
spend-over-budget alert reaches ``firing`` after a real batch on the emulator spends past a budget."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, free_port, loopback
from tests.engine import chat_requests, query, submit, wait_for
from tests.observability import RULES_FILE, provider_file

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

ADMIN = {"Authorization": "Bearer test-admin-key"}
ALERT = "BatchGatewaySoftBudgetExceeded"


class PrometheusServer:
    """``prometheus`` scraping one target every second and evaluating the rules every second."""

    def __init__(self, binary: str, folder: Path, target: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES_FILE)],
            "scrape_configs": [{"job_name": "batch-gateway", "static_configs": [{"targets": [target]}]}],
        }
        config_path = folder / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = folder / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def api(self, path: str, **params: str) -> Any:
        response = loopback.get(f"{self.base_url}/api/v1/{path}", params=params, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def wait_until(self, what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log()}"
            try:
                if found := check():
                    return found
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"prometheus: {what} not seen in {timeout}s\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def gateway(gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return gateway_factory(provider_file(simulator, tmp_path_factory.mktemp("providers"))).start()


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    server = PrometheusServer(prometheus_binary, tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{gateway.port}")
    try:
        server.wait_until("readiness", lambda: loopback.get(f"{server.base_url}/-/ready", timeout=2).status_code == 200)
        yield server
    finally:
        server.stop()


def budget_alerts(prometheus: PrometheusServer) -> list[dict[str, Any]]:
    return [a for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"] == ALERT]


def test_spend_over_budget_alert_fires(
    prometheus: PrometheusServer, gateway: GatewayProcess, client: openai.OpenAI
) -> None:
    loaded = prometheus.api("rules")["groups"]
    assert sum(len(group["rules"]) for group in loaded) == len(
        [rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"] for rule in group["rules"]]
    )
    response = loopback.put(
        f"{gateway.base_url}/admin/budgets",
        json={"scope": "global", "period": "day", "limit_usd": 0.00001, "hard": False},
        headers=ADMIN,
        timeout=30,
    )
    assert response.status_code == 200, response.text

    prometheus.wait_until(
        "the budget gauge at 0",
        lambda: prometheus.api("query", query='batchgw_budget_utilization_ratio{scope="global"} == 0')["result"],
    )
    time.sleep(2)  # two rule evaluations with the budget known and unspent
    assert budget_alerts(prometheus) == []

    batch = wait_for(client, submit(client, chat_requests(12)).id)
    assert batch.status == "completed"
    [(spent,)] = query(gateway, "SELECT SUM(cost_usd) FROM ledger")
    assert spent > 0.00001

    [alert] = prometheus.wait_until(
        "the budget alert firing", lambda: [a for a in budget_alerts(prometheus) if a["state"] == "firing"]
    )
    assert alert["labels"] == {"alertname": ALERT, "scope": "global", "period": "day", "severity": "warning"}
    assert float(alert["value"]) == pytest.approx(spent / 0.00001, rel=1e-9)
    assert alert["annotations"]["summary"] == "Soft budget global (day) is spent"

    [sample] = prometheus.wait_until(
        "the spend counter", lambda: prometheus.api("query", query="sum(batchgw_spend_usd_total) > 0")["result"]
    )
    assert float(sample["value"][1]) == pytest.approx(spent, rel=1e-9)
