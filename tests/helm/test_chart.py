"""The Helm chart, linted and rendered by the real Helm library, its manifests validated against the
Kubernetes schemas, and the properties an operator relies on checked object by object."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.helm.conftest import CHART, FULLNAME, NAMESPACE, Rendered, helm, render, values_file

KUBERNETES_VERSION = "1.34.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
SCENARIOS = ["default", "production-values.yaml", "postgres-inline-values.yaml", "object-storage-values.yaml"]


def scenario_values(scenario: str) -> dict[str, Any] | None:
    return None if scenario == "default" else values_file(scenario)


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture(scope="module")
def production(chart: Any) -> Rendered:
    return render(chart, values_file("production-values.yaml"))


@pytest.fixture(scope="module")
def default(chart: Any) -> Rendered:
    return render(chart)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_is_clean(scenario: str) -> None:
    report = helm.lint(CHART, scenario_values(scenario), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_is_valid_kubernetes(chart: Any, scenario: str) -> None:
    rendered = render(chart, scenario_values(scenario))
    assert rendered.objects
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue  # not in the Kubernetes schemas; checked structurally below
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "bgw", obj["metadata"]


def test_default_values_run_one_embedded_pod(default: Rendered) -> None:
    """No database URL: SQLite on the volume, engine inside the single API pod, no hook Job."""
    assert default.names("Deployment") == {f"{FULLNAME}-api", f"{FULLNAME}-dashboard"}
    assert not default.kinds("Job") and not default.kinds("HorizontalPodAutoscaler")
    api = default.get("Deployment", f"{FULLNAME}-api")
    assert api["spec"]["replicas"] == 1 and api["spec"]["strategy"]["type"] == "Recreate"
    container = containers(api)[0]
    assert container["args"] == ["serve", "--worker"]
    env = env_of(container)
    assert env["BATCHGW_AUTO_MIGRATE"] == "true" and "BATCHGW_DATABASE_URL" not in env
    claim = default.get("PersistentVolumeClaim", f"{FULLNAME}-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "Mode: embedded" in default.notes


def test_production_values_scale_out(production: Rendered) -> None:
    api = production.get("Deployment", f"{FULLNAME}-api")
    worker = production.get("Deployment", f"{FULLNAME}-worker")
    assert api["spec"]["replicas"] == 3 and "replicas" not in worker["spec"]  # the HPA owns the worker count
    assert containers(api)[0]["args"] == ["serve", "--no-worker"] and containers(worker)[0]["args"] == ["worker"]
    for deployment in (api, worker):
        env = env_of(containers(deployment)[0])
        assert env["BATCHGW_AUTO_MIGRATE"] == "false"
        assert env["BATCHGW_DATABASE_URL"] == {"secretKeyRef": {"name": "batch-gateway-db", "key": "url"}}
        assert env["BATCHGW_CONFIG_FILE"] == "/etc/batch-gateway/gateway.toml"
        assert containers(deployment)[0]["envFrom"] == [{"secretRef": {"name": "batch-gateway-provider-keys"}}]
    assert env_of(containers(api)[0])["BATCHGW_ADMIN_KEY"] == {
        "secretKeyRef": {"name": "batch-gateway-admin", "key": "key"}
    }
    hpa = production.get("HorizontalPodAutoscaler", f"{FULLNAME}-worker")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{FULLNAME}-worker"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (4, 16)
    assert not production.kinds("Secret"), "every secret comes from an existing Secret"
    ingress = production.get("Ingress", FULLNAME)
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULLNAME}-api", "port": {"name": "http"}}
    assert "Mode: scaled" in production.notes


@pytest.fixture(scope="module")
def object_storage(chart: Any) -> Rendered:
    return render(chart, values_file("object-storage-values.yaml"))


def volumes_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}


def test_object_storage_needs_no_shared_volume(object_storage: Rendered) -> None:
    """Blobs in a bucket with PostgreSQL: no claim at all; each pod keeps temporary files in an emptyDir."""
    assert not object_storage.kinds("PersistentVolumeClaim")
    for name in ("api", "worker"):
        deployment = object_storage.get("Deployment", f"{FULLNAME}-{name}")
        assert volumes_of(deployment)["data"] == {"name": "data", "emptyDir": {"sizeLimit": "40Gi"}}
        env = env_of(containers(deployment)[0])
        assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "batch-gateway-s3", "key": "AWS_ACCESS_KEY_ID"}}
        assert env["AWS_SECRET_ACCESS_KEY"] == {
            "secretKeyRef": {"name": "batch-gateway-s3", "key": "AWS_SECRET_ACCESS_KEY"}
        }
    for other in [*object_storage.kinds("Job"), object_storage.get("Deployment", f"{FULLNAME}-dashboard")]:
        for container in containers(other):
            assert not {e["name"] for e in container.get("env", [])} & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    account = object_storage.get("ServiceAccount", FULLNAME)
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/batch-gateway-blobs")
    assert "s3://batch-gateway-blobs/prod" in object_storage.notes and "no volume is mounted" in object_storage.notes


def test_object_storage_credentials_are_optional(chart: Any) -> None:
    """Without a Secret the pods rely on a workload identity: no credential variables at all."""
    values = values_file("object-storage-values.yaml")
    values["storage"]["existingSecret"] = ""
    rendered = render(chart, values)
    for deployment in rendered.kinds("Deployment"):
        for container in containers(deployment):
            assert not [e for e in container.get("env", []) if e["name"].startswith("AWS_")]


def test_embedded_mode_with_object_storage_keeps_sqlite_on_its_claim(chart: Any) -> None:
    rendered = render(chart, {"storage": {"url": "s3://blobs/trial"}})
    claim = rendered.get("PersistentVolumeClaim", f"{FULLNAME}-data")
    api = rendered.get("Deployment", f"{FULLNAME}-api")
    assert volumes_of(api)["data"]["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    assert "Mode: embedded" in rendered.notes


def test_blobs_on_a_volume_unless_object_storage(production: Rendered, default: Rendered) -> None:
    for rendered in (production, default):
        for deployment in rendered.kinds("Deployment"):
            for container in containers(deployment):
                assert not [e for e in container.get("env", []) if e["name"].startswith("AWS_")]
    api = production.get("Deployment", f"{FULLNAME}-api")
    assert volumes_of(api)["data"]["persistentVolumeClaim"] == {"claimName": f"{FULLNAME}-data"}
    assert f"shared volume {FULLNAME}-data" in production.notes


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_are_locked_down(chart: Any, scenario: str) -> None:
    rendered = render(chart, scenario_values(scenario))
    pod_specs = [d["spec"]["template"]["spec"] for d in rendered.kinds("Deployment") + rendered.kinds("Job")]
    assert pod_specs
    for spec in pod_specs:
        assert spec["automountServiceAccountToken"] is False
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts_by_volume = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False and security["runAsNonRoot"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["resources"]["requests"] and container["resources"]["limits"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in mounts_by_volume[mounts["/tmp"]]  # the only writable paths: /tmp and /data
            assert set(mounts) <= {"/tmp", "/data", "/etc/batch-gateway"}


def test_probes(production: Rendered) -> None:
    api = containers(production.get("Deployment", f"{FULLNAME}-api"))[0]
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    dashboard = containers(production.get("Deployment", f"{FULLNAME}-dashboard"))[0]
    assert dashboard["livenessProbe"]["httpGet"]["path"] == "/_stcore/health"
    assert dashboard["readinessProbe"]["httpGet"]["path"] == "/_stcore/health"
    worker = containers(production.get("Deployment", f"{FULLNAME}-worker"))[0]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert worker["readinessProbe"]["exec"]["command"][:2] == ["python", "-c"]
    assert [p["name"] for p in worker["ports"]] == ["metrics"]


def test_every_deployment_has_a_matching_disruption_budget(production: Rendered, default: Rendered) -> None:
    for rendered in (production, default):
        budgets = {b["metadata"]["name"]: b for b in rendered.kinds("PodDisruptionBudget")}
        for deployment in rendered.kinds("Deployment"):
            budget = budgets.pop(deployment["metadata"]["name"])
            pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
            assert budget["spec"]["maxUnavailable"] == 1
        assert not budgets, f"budgets without a deployment: {sorted(budgets)}"


def test_services_select_their_pods(production: Rendered) -> None:
    for component in ("api", "dashboard"):
        service = production.get("Service", f"{FULLNAME}-{component}")
        pod_labels = production.get("Deployment", f"{FULLNAME}-{component}")["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == "http"
    dashboard = containers(production.get("Deployment", f"{FULLNAME}-dashboard"))[0]
    assert env_of(dashboard)["BATCHGW_DASHBOARD_GATEWAY_URL"] == f"http://{FULLNAME}-api:8080"
    assert "BATCHGW_DATABASE_URL" not in env_of(dashboard), "the dashboard reads only the admin API"


def test_migrations_run_in_a_pre_install_and_pre_upgrade_hook(production: Rendered) -> None:
    job = production.get("Job", f"{FULLNAME}-migrate")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["db", "upgrade"]
    assert env_of(container)["BATCHGW_DATABASE_URL"] == {"secretKeyRef": {"name": "batch-gateway-db", "key": "url"}}
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert "serviceAccountName" not in job["spec"]["template"]["spec"], "hooks run before the release's account"


def test_service_monitor_scrapes_api_and_worker_metrics(production: Rendered) -> None:
    monitor = production.get("ServiceMonitor", FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]
    endpoints = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    scraped = {}
    for service in production.kinds("Service"):
        labels = service["metadata"]["labels"]
        selected = selector["matchLabels"].items() <= labels.items() and all(
            labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"]
        )
        ports = {p["name"] for p in service["spec"]["ports"]} & set(endpoints)
        if selected and ports:
            scraped[service["metadata"]["name"]] = ports
    assert scraped == {f"{FULLNAME}-api": {"http"}, f"{FULLNAME}-worker-metrics": {"metrics"}}
    assert {e["path"] for e in endpoints.values()} == {"/metrics"}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    headless = production.get("Service", f"{FULLNAME}-worker-metrics")
    assert headless["spec"]["clusterIP"] == "None"


def test_prometheus_rule_is_the_repository_rules_file(production: Rendered) -> None:
    rule = production.get("PrometheusRule", FULLNAME)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    source = yaml.safe_load((CHART / "files" / "alert-rules.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"]
    for group in rule["spec"]["groups"]:
        assert isinstance(group["name"], str) and group["rules"]
        for entry in group["rules"]:
            assert ("alert" in entry) != ("record" in entry) and isinstance(entry["expr"], str | int)


def test_grafana_dashboard_is_the_repository_file_byte_for_byte(production: Rendered) -> None:
    config_map = production.get("ConfigMap", f"{FULLNAME}-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    source = (CHART / "dashboards" / "batch-gateway.json").read_text()
    assert config_map["data"]["batch-gateway.json"] == source
    json.loads(config_map["data"]["batch-gateway.json"])


def test_monitoring_objects_are_off_by_default(default: Rendered) -> None:
    assert not default.kinds("ServiceMonitor") and not default.kinds("PrometheusRule")
    assert f"{FULLNAME}-grafana-dashboard" not in default.names("ConfigMap")
    assert not default.kinds("Ingress")
