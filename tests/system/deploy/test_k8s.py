"""Kubernetes manifests: they render with kustomize, validate offline, and agree with the code.

Rendering uses `kubectl kustomize` (kustomize v5 built in); validation uses the schemas
bundled with `kubernetes-validate`. The Prometheus Operator kinds have no bundled schema
and are checked structurally here instead.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from metrics.registry import exported_metric_names
from service.core.config import ENV_VARS, Settings, load_settings

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.32"  # the kubectl client here; kubernetes-validate bundles its schemas
KUSTOMIZATIONS = ("base", "monitoring", "mongodb", "overlays/dev", "overlays/prod")
APP_KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/prod")
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
POD_LABELS = {"app.kubernetes.io/name": "realtime", "app.kubernetes.io/component": "server"}
SECRET_EXAMPLE = K8S / "base" / "secret.example.yaml"

Doc = dict[str, Any]


def _kubectl() -> str:
    found = shutil.which("kubectl") or "/usr/bin/kubectl"
    if not Path(found).exists():
        pytest.fail("kubectl not found: it renders the kustomizations (`kubectl kustomize`)")
    return found


@functools.cache
def _render_text(path: str) -> str:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(K8S / path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize k8s/{path} failed:\n{result.stderr}"
    return result.stdout


def render(path: str) -> list[Doc]:
    """The objects `kubectl kustomize k8s/<path>` produces (a fresh copy per call)."""
    return [doc for doc in yaml.safe_load_all(_render_text(path)) if doc]


def objects(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [doc for doc in objects(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind} {name}, found {len(found)}"
    return found[0]


def realtime_pod(docs: list[Doc]) -> Doc:
    template: Doc = one(docs, "Deployment", "realtime")["spec"]["template"]
    return template


def realtime_container(docs: list[Doc]) -> Doc:
    containers: list[Doc] = realtime_pod(docs)["spec"]["containers"]
    assert [c["name"] for c in containers] == ["realtime"]
    return containers[0]


def secret_example() -> Doc:
    doc = yaml.safe_load(SECRET_EXAMPLE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def secret_values(secret: Doc) -> dict[str, str]:
    values = {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}
    values.update(secret.get("stringData", {}))
    return values


def container_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """Every variable the container gets: envFrom ConfigMaps and Secrets, then `env`.

    A Secret not rendered (created out of band in production) is represented by
    secret.example.yaml.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            name = source["secretRef"]["name"]
            rendered = [s for s in objects(docs, "Secret") if s["metadata"]["name"] == name]
            example = secret_example()
            assert rendered or example["metadata"]["name"] == name, f"unknown Secret {name}"
            env.update(secret_values(rendered[0] if rendered else example))
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", "<valueFrom>")
    return env


def pod_specs(docs: list[Doc]) -> list[tuple[str, Doc]]:
    specs = []
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            specs.append((f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]))
    return specs


def seconds(value: str) -> float:
    """A duration as nginx or Prometheus writes it (`3600`, `60s`, `5m`) in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", value)
    assert match, f"not a duration: {value!r}"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    return float(match.group(1)) * scale


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomization_renders(path: str) -> None:
    """`kubectl kustomize` renders the directory into named, typed objects."""
    docs = render(path)
    assert docs
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_rendered_objects_validate_against_kubernetes_schemas(path: str) -> None:
    """Every rendered built-in object passes the strict Kubernetes 1.32 schema."""
    errors = []
    for doc in render(path):
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
            continue  # no bundled schema: test_monitoring_custom_resources_are_well_formed
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']} {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(exc.message)
    assert errors == []


def test_secret_example_validates_against_kubernetes_schema() -> None:
    """secret.example.yaml, applied by hand, is a valid Secret."""
    kubernetes_validate.validate(secret_example(), KUBERNETES_VERSION, strict=True)


def test_monitoring_custom_resources_are_well_formed() -> None:
    """ServiceMonitor and PrometheusRule have the fields the Prometheus Operator requires."""
    docs = render("base")
    kinds = {(doc["apiVersion"], doc["kind"]) for doc in docs}
    assert kinds >= CUSTOM_RESOURCES
    service = one(docs, "Service", "realtime")
    monitor = one(docs, "ServiceMonitor", "realtime")
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert seconds(endpoint["interval"]) == 15
    assert seconds(endpoint["scrapeTimeout"]) < seconds(endpoint["interval"])
    rule = one(docs, "PrometheusRule", "realtime")
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for item in group["rules"]:
            assert set(item) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert ("alert" in item) != ("record" in item)
            assert isinstance(item["expr"], str) and item["expr"].strip()


@pytest.mark.parametrize("path", APP_KUSTOMIZATIONS)
def test_container_port_is_the_default_port(path: str) -> None:
    """The container's `http` port is the service's default PORT, and the Service targets it."""
    docs = render(path)
    container = realtime_container(docs)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": Settings().port}
    assert int(container_env(docs, container).get("PORT", Settings().port)) == Settings().port
    [service_port] = one(docs, "Service", "realtime")["spec"]["ports"]
    assert (service_port["name"], service_port["port"], service_port["targetPort"]) == ("http", 80, "http")


def test_probe_paths_are_routes_of_the_app() -> None:
    """Startup, liveness and readiness probe paths are served by the app's route table."""
    from handlers.routes import route_patterns

    patterns = route_patterns()
    container = realtime_container(render("base"))
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for kind, probe in probes.items():
        assert probe["port"] == "http", kind
        # Tornado takes the first matching route; a catch-all (the static dashboard) would
        # answer any path, so it does not count.
        route = next((p for p in patterns if re.fullmatch(p, probe["path"])), None)
        assert route is not None, (kind, probe["path"])
        assert not re.fullmatch(route, "/no-such-route/for-probe-check"), (kind, route)


@pytest.mark.parametrize("path", APP_KUSTOMIZATIONS)
def test_env_var_names_are_read_by_the_service(path: str) -> None:
    """Every variable the manifests set is one `service.core.config` reads (no typos, no dead config)."""
    docs = render(path)
    names = set(container_env(docs, realtime_container(docs)))
    names |= {
        key
        for cm in objects(docs, "ConfigMap")
        if cm["metadata"]["name"].startswith("realtime-config")
        for key in cm["data"]
    }
    names |= {key for secret in objects(docs, "Secret") for key in secret_values(secret)}
    assert names - set(ENV_VARS) == set()


def test_secret_example_keys_are_read_by_the_service() -> None:
    """The example Secret only carries variables the service reads, JWT_SECRET among them."""
    keys = set(secret_values(secret_example()))
    assert "JWT_SECRET" in keys
    assert keys - set(ENV_VARS) == set()


@pytest.mark.parametrize("path", APP_KUSTOMIZATIONS)
def test_configuration_is_accepted_by_load_settings(path: str) -> None:
    """The environment the pod gets passes the service's own validation (it would start)."""
    docs = render(path)
    settings = load_settings(container_env(docs, realtime_container(docs)))
    assert settings.mongodb_uri is not None  # never the embedded server inside a cluster
    assert settings.log_format == "json" or path == "overlays/dev"


def test_dev_overlay_runs_in_dev_mode_and_prod_does_not() -> None:
    """DEV_MODE is 1 in the dev overlay and 0 in base and prod."""
    for path, expected in (("base", False), ("overlays/dev", True), ("overlays/prod", False)):
        docs = render(path)
        assert load_settings(container_env(docs, realtime_container(docs))).dev_mode is expected, path


@pytest.mark.parametrize("path", APP_KUSTOMIZATIONS)
def test_termination_grace_outlasts_prestop_and_drain(path: str) -> None:
    """terminationGracePeriodSeconds covers the preStop sleep plus DRAIN_SECONDS, with margin."""
    docs = render(path)
    pod = realtime_pod(docs)["spec"]
    container = realtime_container(docs)
    drain = float(container_env(docs, container).get("DRAIN_SECONDS", Settings().drain_seconds))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 10


@pytest.mark.parametrize("path", APP_KUSTOMIZATIONS)
def test_ingress_timeouts_exceed_heartbeat(path: str) -> None:
    """ingress-nginx keeps idle WebSocket and SSE streams open far longer than a heartbeat."""
    docs = render(path)
    heartbeat = float(
        container_env(docs, realtime_container(docs)).get("HEARTBEAT_SECONDS", Settings().heartbeat_seconds)
    )
    annotations = one(docs, "Ingress", "realtime")["metadata"]["annotations"]
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert seconds(annotations[f"nginx.ingress.kubernetes.io/{name}"]) >= 10 * heartbeat, name


def test_ingress_streams_without_buffering() -> None:
    """The Ingress is ingress-nginx with response and request buffering off over HTTP/1.1."""
    docs = render("base")
    ingress = one(docs, "Ingress", "realtime")
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-http-version"] == "1.1"
    [rule] = ingress["spec"]["rules"]
    [route] = rule["http"]["paths"]
    assert route["backend"]["service"] == {"name": "realtime", "port": {"name": "http"}}


@pytest.mark.parametrize("path", (*APP_KUSTOMIZATIONS, "mongodb"))
def test_pods_run_non_root_with_read_only_root_filesystem(path: str) -> None:
    """Every pod runs as non-root, read-only root, no privilege escalation, no capabilities."""
    specs = pod_specs(render(path))
    assert specs
    for name, spec in specs:
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, name
        assert pod_context["runAsUser"] > 0, name
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert context["capabilities"] == {"drop": ["ALL"]}, (name, container["name"])


def test_realtime_pod_runs_as_the_image_user() -> None:
    """The realtime pod runs as uid 10001, the Dockerfile's USER."""
    pod = realtime_pod(render("base"))["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001
    assert realtime_container(render("base"))["securityContext"]["runAsUser"] == 10001


@pytest.mark.parametrize("path", APP_KUSTOMIZATIONS)
def test_written_paths_are_writable_volumes(path: str) -> None:
    """PROMETHEUS_MULTIPROC_DIR, DATA_DIR and /tmp are emptyDir mounts under a read-only root."""
    docs = render(path)
    pod = realtime_pod(docs)["spec"]
    container = realtime_container(docs)
    env = container_env(docs, container)
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    mounts = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs}
    assert {"/tmp", env["PROMETHEUS_MULTIPROC_DIR"]} <= mounts
    assert any(Path(env["DATA_DIR"]).is_relative_to(mount) for mount in mounts)


@pytest.mark.parametrize("path", (*APP_KUSTOMIZATIONS, "mongodb"))
def test_every_container_has_resource_requests_and_limits(path: str) -> None:
    """Every container states CPU and memory requests and limits."""
    for name, spec in pod_specs(render(path)):
        for container in spec["containers"]:
            resources = container["resources"]
            for section in ("requests", "limits"):
                assert set(resources[section]) >= {"cpu", "memory"}, (name, container["name"], section)


def test_rolling_update_never_drops_below_desired_replicas() -> None:
    """Rolling updates add one pod at a time and never remove a ready one first."""
    strategy = one(render("base"), "Deployment", "realtime")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def test_replica_counts_per_overlay() -> None:
    """Base and prod run 3 replicas, dev runs 1, and the HPA bounds include them."""
    for path, replicas in (("base", 3), ("overlays/dev", 1), ("overlays/prod", 3)):
        docs = render(path)
        assert one(docs, "Deployment", "realtime")["spec"]["replicas"] == replicas, path
        hpa = one(docs, "HorizontalPodAutoscaler", "realtime")["spec"]
        assert hpa["minReplicas"] == replicas <= hpa["maxReplicas"], path


def test_prod_overlay_raises_resources_above_base() -> None:
    """Prod pods get more CPU and memory than the base defaults."""
    base = realtime_container(render("base"))["resources"]
    prod = realtime_container(render("overlays/prod"))["resources"]
    assert base != prod
    assert prod["limits"]["cpu"] != base["limits"]["cpu"]
    assert prod["limits"]["memory"] != base["limits"]["memory"]


def test_hpa_scales_the_deployment_on_cpu_and_exported_connections() -> None:
    """The HPA targets the Deployment, on CPU and on the `realtime_connections` metric it exports."""
    hpa = one(render("base"), "HorizontalPodAutoscaler", "realtime")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "realtime"}
    by_type = {metric["type"]: metric for metric in hpa["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    assert by_type["Resource"]["resource"]["target"]["averageUtilization"] == 70
    assert by_type["Pods"]["pods"]["metric"]["name"] in exported_metric_names()


def test_the_hpa_target_is_the_one_the_docs_explain() -> None:
    """README's Sizing derives the connections-per-pod target from the scaling curve, and
    k8s/README.md names it: both must say the number the manifest sets."""
    hpa = one(render("base"), "HorizontalPodAutoscaler", "realtime")["spec"]
    (pods,) = [metric for metric in hpa["metrics"] if metric["type"] == "Pods"]
    target = pods["pods"]["target"]["averageValue"]
    readme = (ROOT / "README.md").read_text()
    explained = re.search(r"\*\*HPA target\*\* \(`k8s/base/hpa\.yaml`.*?averageValue\s+\*\*(\d+)\*\*", readme, re.S)
    assert explained is not None and explained.group(1) == target
    named = re.search(r"\((\d+) connections per pod on average", (ROOT / "k8s" / "README.md").read_text())
    assert named is not None and named.group(1) == target


@pytest.mark.parametrize("path", APP_KUSTOMIZATIONS)
def test_selectors_match_the_pod_labels(path: str) -> None:
    """Service, PDB, NetworkPolicy and ServiceMonitor select the realtime pods."""
    docs = render(path)
    labels = realtime_pod(docs)["metadata"]["labels"]
    assert labels.items() >= POD_LABELS.items()
    selectors = {
        "Deployment": one(docs, "Deployment", "realtime")["spec"]["selector"]["matchLabels"],
        "Service": one(docs, "Service", "realtime")["spec"]["selector"],
        "PodDisruptionBudget": one(docs, "PodDisruptionBudget", "realtime")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": one(docs, "NetworkPolicy", "realtime")["spec"]["podSelector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector and selector.items() <= labels.items(), kind


def test_pdb_allows_one_voluntary_disruption() -> None:
    """The PDB lets exactly one realtime pod drain at a time."""
    spec = one(render("base"), "PodDisruptionBudget", "realtime")["spec"]
    assert spec.get("maxUnavailable") == 1 or spec.get("minAvailable") == 2


def test_networkpolicy_admits_ingress_controller_and_prometheus_on_http() -> None:
    """Only ingress-nginx and Prometheus may connect, and only to the http port."""
    docs = render("base")
    policy = one(docs, "NetworkPolicy", "realtime")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    [rule] = policy["ingress"]
    namespaces = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]}
    assert namespaces == {"ingress-nginx", "monitoring"}
    container_ports = {port["name"]: port["containerPort"] for port in realtime_container(docs)["ports"]}
    for port in rule["ports"]:
        assert container_ports.get(port["port"], port["port"]) == Settings().port


def test_networkpolicy_lets_pods_reach_mongodb_and_dns() -> None:
    """Egress is open to MongoDB (27017/TCP) and DNS (53/UDP and TCP), nothing else."""
    policy = one(render("base"), "NetworkPolicy", "realtime")["spec"]
    allowed = {(port["port"], port["protocol"]) for rule in policy["egress"] for port in rule["ports"]}
    assert allowed == {(27017, "TCP"), (53, "UDP"), (53, "TCP")}


def test_dashboard_configmap_carries_dashboard_json() -> None:
    """The Grafana dashboard ConfigMap holds dashboard.json unchanged, labelled for the sidecar."""
    configmap = one(render("base"), "ConfigMap", "realtime-grafana-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    [content] = configmap["data"].values()
    expected = json.loads((K8S / "monitoring" / "dashboard.json").read_text(encoding="utf-8"))
    assert json.loads(content) == expected


def test_prometheus_rule_is_alerts_yaml() -> None:
    """The rendered PrometheusRule is k8s/monitoring/alerts.yaml (one source for the rules)."""
    rule = one(render("base"), "PrometheusRule", "realtime")
    source = yaml.safe_load((K8S / "monitoring" / "alerts.yaml").read_text(encoding="utf-8"))
    assert rule["spec"] == source["spec"]


def test_prod_overlay_pins_the_image() -> None:
    """Prod deploys a pinned release tag (or digest), never `latest`."""
    image = realtime_container(render("overlays/prod"))["image"]
    assert "@sha256:" in image or re.search(r":v?\d+\.\d+\.\d+$", image), image


def test_prod_overlay_terminates_tls() -> None:
    """The prod Ingress serves its host over TLS."""
    ingress = one(render("overlays/prod"), "Ingress", "realtime")["spec"]
    hosts = {rule["host"] for rule in ingress["rules"]}
    assert hosts <= {host for tls in ingress["tls"] for host in tls["hosts"]}


def test_dev_overlay_uses_the_in_cluster_replica_set() -> None:
    """Dev's MONGODB_URI names every StatefulSet member and its replica set."""
    docs = render("overlays/dev")
    uri = container_env(docs, realtime_container(docs))["MONGODB_URI"]
    statefulset = one(docs, "StatefulSet", "mongodb")
    service = statefulset["spec"]["serviceName"]
    members = [f"mongodb-{i}.{service}:27017" for i in range(statefulset["spec"]["replicas"])]
    args = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    replica_set = args[args.index("--replSet") + 1]
    assert uri == f"mongodb://{','.join(members)}/?replicaSet={replica_set}"


def test_mongodb_replica_set_has_three_members_with_storage() -> None:
    """MongoDB is a 3-member StatefulSet with a persistent volume per member."""
    statefulset = one(render("mongodb"), "StatefulSet", "mongodb")["spec"]
    assert statefulset["replicas"] == 3
    [claim] = statefulset["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in statefulset["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data/db"


def test_mongodb_headless_service_publishes_unready_members() -> None:
    """The headless Service resolves members before they are ready, so the set can form."""
    docs = render("mongodb")
    service = one(docs, "Service", "mongodb")["spec"]
    assert service["clusterIP"] == "None"
    assert service["publishNotReadyAddresses"] is True
    assert one(docs, "StatefulSet", "mongodb")["spec"]["serviceName"] == "mongodb"


def test_mongodb_init_job_initiates_the_same_replica_set() -> None:
    """The init Job's script initiates rs0 with every member, and only when not yet initiated."""
    docs = render("mongodb")
    job = one(docs, "Job", "mongodb-init")["spec"]["template"]["spec"]
    [volume] = [v for v in job["volumes"] if "configMap" in v]
    script = one(docs, "ConfigMap", volume["configMap"]["name"])["data"]["init-replica-set.sh"]
    statefulset = one(docs, "StatefulSet", "mongodb")["spec"]
    args = statefulset["template"]["spec"]["containers"][0]["args"]
    assert f'_id: "{args[args.index("--replSet") + 1]}"' in script
    for i in range(statefulset["replicas"]):
        assert f'host: "mongodb-{i}.mongodb:27017"' in script
    assert "NotYetInitialized" in script


def test_mongodb_init_script_is_valid_shell() -> None:
    """init-replica-set.sh parses with `sh -n`."""
    result = subprocess.run(
        ["sh", "-n", str(K8S / "mongodb" / "init-replica-set.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_manifests_pass_yamllint() -> None:
    """Every YAML file under k8s/ passes yamllint (syntax, duplicate keys, indentation)."""
    config = (
        "{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
        "comments: {min-spaces-from-content: 1}, truthy: {check-keys: false}}}"
    )
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-d", config, str(K8S)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
