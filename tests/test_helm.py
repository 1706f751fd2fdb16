"""The Helm chart and the container image, checked offline.

Everything a user gets from `helm install` is rendered here with Helm's own Go SDK
(helm-python-sdk, no binary, no cluster), linted, and validated against the
Kubernetes OpenAPI schemas of the oldest version the chart supports and the newest
one kubernetes-validate ships.  The assertions are about what a user sees: the
sticky-session annotations, the probes, the drain hook and grace period, the pod
hardening, and values the chart refuses.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
yaml = pytest.importorskip("yaml")

from node.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = ROOT / "helm" / "fanline"
CI_VALUES = sorted(CHART_DIR.glob("ci/*.yaml"))
RELEASE = "rt"

# The floor is Chart.yaml's kubeVersion; the ceiling is what kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())

# Settings other engineers are adding to the node now; the chart already wires them.
PENDING_SETTINGS = {"ALLOWED_ORIGINS", "JWT_SECRET", "JWT_PUBLIC_KEY_FILE", "JWKS_URL", "API_KEYS"}

# Gateway API durations (GEP-2257), as the HTTPRoute CRD checks them.
GATEWAY_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Render like `helm install rt helm/fanline`; objects grouped by kind."""
    manifests = chart.render(values, name=RELEASE, namespace="realtime", is_install=True)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def one(objects: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    assert len(objects.get(kind, [])) == 1, f"expected one {kind}, got {objects.get(kind)}"
    return objects[kind][0]


def load_values(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def pod_spec(objects: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def node_container(objects: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    (container,) = pod_spec(objects)["containers"]
    return container


def container_port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def check_custom_resource(doc: dict[str, Any], objects: dict[str, list[dict[str, Any]]]) -> None:
    """CRDs have no schema in kubernetes-validate: check what a wrong value would break."""
    service = one(objects, "Service")
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    if doc["kind"] == "ServiceMonitor":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert doc["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        for endpoint in doc["spec"]["endpoints"]:
            assert endpoint["port"] == "internal" and endpoint["path"] == "/metrics"
    elif doc["kind"] == "HTTPRoute":
        assert doc["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert doc["spec"]["parentRefs"] and all(ref.get("name") for ref in doc["spec"]["parentRefs"])
        for rule in doc["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                assert (ref["name"], ref["port"]) == (service["metadata"]["name"], service_ports["client"])
            assert GATEWAY_DURATION.match(rule["timeouts"]["request"])
            persistence = rule.get("sessionPersistence")
            if persistence:
                assert persistence["type"] == "Cookie"
                assert GATEWAY_DURATION.match(persistence["absoluteTimeout"])
                assert 0 < len(persistence["sessionName"]) <= 128
                assert persistence["cookieConfig"]["lifetimeType"] in ("Permanent", "Session")
    else:
        raise AssertionError(f"no check for {doc['apiVersion']} {doc['kind']}")


# -- every values file renders, lints and validates --------------------------------------

VALUES_FILES = [None, *CI_VALUES]


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.name if p else "defaults")
def test_renders_valid_kubernetes_objects(chart: Any, values_file: Path | None) -> None:
    values = load_values(values_file) if values_file else None
    objects = render(chart, values)
    validated = 0
    for kind, docs in objects.items():
        for doc in docs:
            if kind in ("ServiceMonitor", "HTTPRoute"):
                check_custom_resource(doc, objects)
                continue
            for version in KUBE_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
            validated += 1
    assert validated >= 6  # ServiceAccount, ConfigMap, Service, Deployment, PDB, and Secret or Ingress
    # Every object carries the standard labels.
    for docs in objects.values():
        for doc in docs:
            labels = doc["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "fanline"
            assert labels["app.kubernetes.io/instance"] == RELEASE
            assert labels["app.kubernetes.io/managed-by"] == "Helm"


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.name if p else "defaults")
def test_lints_clean(values_file: Path | None) -> None:
    values = load_values(values_file) if values_file else None
    for version in KUBE_VERSIONS:
        report = helm.lint(CHART_DIR, values, strict=True, kube_version=f"v{version}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems and not report["errors"], report


def test_example_values_scale_out_behind_a_proxy() -> None:
    names = {p.name for p in CI_VALUES}
    assert {"redis-values.yaml", "nats-values.yaml", "kafka-values.yaml"} <= names
    for path in CI_VALUES:
        values = load_values(path)
        assert values.get("replicaCount", 1) >= 2, path.name
        assert values.get("ingress", {}).get("enabled") or values.get("httpRoute", {}).get("enabled"), path.name


# -- sticky sessions and long-lived streams ----------------------------------------------


def test_nginx_ingress_is_sticky_and_keeps_streams_open(chart: Any) -> None:
    objects = render(chart, load_values(CHART_DIR / "ci" / "redis-values.yaml"))
    ingress = one(objects, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "affinity"] == "cookie"
    assert annotations[prefix + "session-cookie-name"] == "fanline_affinity"
    assert annotations[prefix + "session-cookie-max-age"] == "86400"
    assert annotations[prefix + "session-cookie-path"] == "/"
    assert annotations[prefix + "session-cookie-samesite"] == "Lax"
    assert annotations[prefix + "proxy-read-timeout"] == "3600"
    assert annotations[prefix + "proxy-send-timeout"] == "3600"
    assert annotations[prefix + "proxy-buffering"] == "off"
    # Only the client port is routed: metrics and drain stay inside the cluster.
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends and all(b["port"] == {"name": "client"} for b in backends)
    assert ingress["spec"]["ingressClassName"] == "nginx"


def test_traefik_gets_sticky_cookie_on_the_service(chart: Any) -> None:
    objects = render(chart, load_values(CHART_DIR / "ci" / "nats-values.yaml"))
    service_annotations = one(objects, "Service")["metadata"]["annotations"]
    assert service_annotations["traefik.ingress.kubernetes.io/service.sticky.cookie"] == "true"
    assert service_annotations["traefik.ingress.kubernetes.io/service.sticky.cookie.name"] == "fanline_affinity"
    ingress_annotations = one(objects, "Ingress")["metadata"].get("annotations", {})
    assert not any(k.startswith("nginx.ingress.kubernetes.io/") for k in ingress_annotations)


def test_httproute_session_persistence_only_on_opt_in(chart: Any) -> None:
    values = load_values(CHART_DIR / "ci" / "gateway-values.yaml")
    (rule,) = one(render(chart, values), "HTTPRoute")["spec"]["rules"]
    assert rule["sessionPersistence"]["sessionName"] == "fanline_affinity"
    assert rule["timeouts"] == {"request": "0s"}

    values["httpRoute"]["sessionPersistence"]["enabled"] = False
    (rule,) = one(render(chart, values), "HTTPRoute")["spec"]["rules"]
    assert "sessionPersistence" not in rule


# -- probes, drain and grace period ------------------------------------------------------


def test_probes_and_prestop_drain_use_the_internal_port(chart: Any) -> None:
    objects = render(chart)
    container = node_container(objects)
    internal = container_port(container, "internal")
    assert internal == 9000 and container_port(container, "client") == 8000
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "internal"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "internal"}
    assert container["lifecycle"]["preStop"]["exec"]["command"] == [
        "fanline", "drain", "--url", "http://127.0.0.1:9000", "--wait",
    ]  # fmt: skip
    # The Service names both ports, pointing at the container's named ports.
    ports = {p["name"]: p for p in one(objects, "Service")["spec"]["ports"]}
    assert ports["client"]["targetPort"] == "client" and ports["internal"]["targetPort"] == "internal"


@pytest.mark.parametrize(("window", "expected"), [(20, 35), (45, 60), (7.5, 23)])
def test_grace_period_follows_the_drain_window(chart: Any, window: float, expected: int) -> None:
    objects = render(chart, {"drain": {"windowSeconds": window}})
    grace = pod_spec(objects)["terminationGracePeriodSeconds"]
    # preStop blocks up to window + 5 s, then uvicorn takes up to 5 s, then a margin.
    assert grace == expected and grace >= window + 5 + 5
    assert one(objects, "ConfigMap")["data"]["FANLINE_DRAIN_WINDOW"] == str(window)


def test_grace_period_override_below_the_drain_budget_fails(chart: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds=30 is below"):
        render(chart, {"drain": {"windowSeconds": 20, "terminationGracePeriodSeconds": 30}})
    objects = render(chart, {"drain": {"windowSeconds": 20, "terminationGracePeriodSeconds": 120}})
    assert pod_spec(objects)["terminationGracePeriodSeconds"] == 120


def test_disruption_budget_matches_the_pods(chart: Any) -> None:
    objects = render(chart, load_values(CHART_DIR / "ci" / "redis-values.yaml"))
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    rollout = one(objects, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert rollout == {"maxSurge": 1, "maxUnavailable": 0}


def test_autoscaler_scales_on_connections_and_shrinks_slowly(chart: Any) -> None:
    objects = render(chart, load_values(CHART_DIR / "ci" / "nats-values.yaml"))
    hpa = one(objects, "HorizontalPodAutoscaler")
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "fanline_connections"
    assert metrics["Pods"]["pods"]["target"] == {"type": "AverageValue", "averageValue": "8000"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 600
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    # The HPA owns the replica count.
    assert "replicas" not in one(objects, "Deployment")["spec"]


# -- hardening -----------------------------------------------------------------------------


def test_pod_runs_non_root_on_a_read_only_root(chart: Any) -> None:
    objects = render(chart)
    pod = pod_spec(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = node_container(objects)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # /tmp is the one writable place, and it is an emptyDir.
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    # Pods are spread over zones and nodes without blocking scheduling.
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in spread)

    sysctls = [{"name": "net.core.somaxconn", "value": "4096"}]
    objects = render(chart, {"podSecurityContext": {"sysctls": sysctls}})
    assert pod_spec(objects)["securityContext"]["sysctls"] == sysctls


# -- configuration wiring ------------------------------------------------------------------


def test_config_goes_to_configmap_and_credentials_to_secret(chart: Any) -> None:
    values = load_values(CHART_DIR / "ci" / "gateway-values.yaml")
    values["auth"] = {"apiKeys": ["k1", "k2"], "jwtSecret": "hmac"}
    values["extraEnv"] = [{"name": "FANLINE_REPLAY_LIMIT", "value": "500"}]
    objects = render(chart, values)
    config = one(objects, "ConfigMap")["data"]
    secret = {k: base64.b64decode(v).decode() for k, v in one(objects, "Secret")["data"].items()}
    assert config["FANLINE_HOST"] == "0.0.0.0"
    assert (config["FANLINE_PORT"], config["FANLINE_INTERNAL_PORT"]) == ("8000", "9000")
    assert secret["FANLINE_BROKER"] == values["broker"]["url"]
    assert secret["FANLINE_API_KEYS"] == "k1,k2" and secret["FANLINE_JWT_SECRET"] == "hmac"
    assert "s3cret" not in str(config)
    container = node_container(objects)
    assert {"configMapRef": {"name": "rt-fanline"}} in container["envFrom"]
    assert {"secretRef": {"name": "rt-fanline"}} in container["envFrom"]
    assert {"name": "FANLINE_REPLAY_LIMIT", "value": "500"} in container["env"]

    # Every variable the chart sets is one the node reads (or one being added now):
    # a typo here would be silently ignored by the node.
    known = {f.name.upper() for f in dataclasses.fields(Settings)} | PENDING_SETTINGS
    names = set(config) | set(secret) | {e["name"] for e in container["env"]}
    assert {n.removeprefix("FANLINE_") for n in names} <= known


def test_config_change_rolls_the_pods(chart: Any) -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        annotations = one(render(chart, values), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return {k: v for k, v in annotations.items() if k.startswith("checksum/")}

    base = checksums({})
    assert checksums({"config": {"logLevel": "debug"}})["checksum/config"] != base["checksum/config"]
    assert checksums({"auth": {"jwtSecret": "rotated"}})["checksum/secret"] != base["checksum/secret"]


def test_existing_secret_and_mounted_jwt_key(chart: Any) -> None:
    objects = render(chart, load_values(CHART_DIR / "ci" / "kafka-values.yaml"))
    assert "Secret" not in objects
    container = node_container(objects)
    assert {"secretRef": {"name": "fanline-credentials"}} in container["envFrom"]
    key_file = one(objects, "ConfigMap")["data"]["FANLINE_JWT_PUBLIC_KEY_FILE"]
    (mount,) = [m for m in container["volumeMounts"] if key_file.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod_spec(objects)["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "fanline-jwt-public-key"


# -- values the chart refuses --------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": -1}, "/replicaCount': minimum"),
        ({"replicaCount": "3"}, "/replicaCount': got string, want integer"),
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),  # a typo of replicaCount
        ({"ingress": {"sticky": {"cookieNmae": "x"}}}, "additional properties 'cookieNmae' not allowed"),
        ({"config": {"logLevel": "verbose"}}, "/config/logLevel"),
        ({"broker": {"url": "amqp://rabbit:5672"}}, "/broker/url"),
        ({"drain": {"windowSeconds": 0}}, "/drain/windowSeconds"),
        ({"httpRoute": {"requestTimeout": "1 hour"}}, "/httpRoute/requestTimeout"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "",
)
def test_schema_rejects_bad_values(chart: Any, values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        render(chart, values)


@pytest.mark.parametrize(
    "values",
    [{"replicaCount": 2}, {"autoscaling": {"enabled": True}}],
    ids=["replicaCount=2", "autoscaling"],
)
def test_memory_broker_refuses_more_than_one_pod(chart: Any, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmRenderError, match="memory:// is single-node only"):
        render(chart, values)


# -- the container image (static: no Docker engine in CI) ---------------------------------


def test_dockerfile_runs_fanline_node_as_non_root() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    stages = [i for i in instructions if i.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage: the builder's tools stay out of the image"
    final = instructions[instructions.index(stages[-1]) :]
    users = [i.split()[1] for i in final if i.startswith("USER ")]
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root UID, so runAsNonRoot can verify it"
    assert int(uid) == 10001  # the chart's podSecurityContext.runAsUser
    assert 'ENTRYPOINT ["fanline", "node"]' in final
    assert any(i.startswith("EXPOSE") and {"8000", "9000"} <= set(i.split()[1:]) for i in final)
    assert any("PYTHONDONTWRITEBYTECODE=1" in i for i in final)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored
