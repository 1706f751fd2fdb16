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
import json
import re
from pathlib import Path
from typing import Any

import pytest

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
yaml = pytest.importorskip("yaml")

from node.metrics import Metrics  # noqa: E402
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


def named(objects: dict[str, list[dict[str, Any]]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects.get(kind, []) if o["metadata"]["name"] == name]
    return found


def client_service(objects: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return named(objects, "Service", f"{RELEASE}-fanline")


def internal_service(objects: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return named(objects, "Service", f"{RELEASE}-fanline-internal")


def exported_metric_names() -> set[str]:
    """Every series name a node's /metrics can carry (histograms as _bucket, _sum, _count)."""
    names = set()
    for metric in Metrics().all():
        if metric.kind == "histogram":
            names |= {metric.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(metric.name)
    return names


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bfanline_[a-z_]+\b", expr))


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
    service = client_service(objects)
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    if doc["kind"] == "ServiceMonitor":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        # It selects the internal Service, and only that one.
        selector = doc["spec"]["selector"]["matchLabels"].items()
        assert [s["metadata"]["name"] for s in objects["Service"] if selector <= s["metadata"]["labels"].items()] == [
            internal_service(objects)["metadata"]["name"]
        ]
        for endpoint in doc["spec"]["endpoints"]:
            assert endpoint["port"] == "internal" and endpoint["path"] == "/metrics"
    elif doc["kind"] == "PrometheusRule":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        rules = [rule for group in doc["spec"]["groups"] for rule in group["rules"]]
        assert rules and all(rule["alert"] and rule["expr"] for rule in rules)
        for rule in rules:
            assert metric_names_in(rule["expr"]) and metric_names_in(rule["expr"]) <= exported_metric_names(), rule
    elif doc["kind"] == "ScaledObject":
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        assert doc["spec"]["scaleTargetRef"]["name"] == one(objects, "Deployment")["metadata"]["name"]
        for trigger in doc["spec"]["triggers"]:
            if trigger["type"] == "prometheus":
                assert trigger["metadata"]["serverAddress"].startswith("http")
                assert metric_names_in(trigger["metadata"]["query"]) <= exported_metric_names()
    elif doc["kind"] == "HTTPRoute":
        assert doc["apiVersion"] == "gateway.networking.k8s.io/v1"
        assert doc["spec"]["parentRefs"] and all(ref.get("name") for ref in doc["spec"]["parentRefs"])
        for rule in doc["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                assert (ref["name"], ref["port"]) == (service["metadata"]["name"], service_ports["client"])
            if "timeouts" in rule:
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
            if kind in ("ServiceMonitor", "HTTPRoute", "PrometheusRule", "ScaledObject"):
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


@pytest.mark.parametrize(
    ("name", "scheme"), [("redis-cluster-values.yaml", "redis+cluster://"), ("nats-cluster-values.yaml", "nats://")]
)
def test_cluster_brokers_go_into_the_secret_with_every_seed(chart: Any, name: str, scheme: str) -> None:
    values = load_values(CHART_DIR / "ci" / name)
    secret = one(render(chart, values), "Secret")
    url = base64.b64decode(secret["data"]["FANLINE_BROKER"]).decode() if "data" in secret else secret["stringData"]["FANLINE_BROKER"]
    assert url == values["broker"]["url"] and url.startswith(scheme)
    assert len(url.split("?")[0].split(",")) == 3  # several seeds: one dead node does not stop a start


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
    service_annotations = client_service(objects)["metadata"]["annotations"]
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
    # Each Service points at the container's named port.
    (client,) = client_service(objects)["spec"]["ports"]
    (internal,) = internal_service(objects)["spec"]["ports"]
    assert client["targetPort"] == "client" and internal["targetPort"] == "internal"


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
    values = load_values(CHART_DIR / "ci" / "nats-values.yaml")
    values["autoscaling"]["engine"] = "hpa"
    objects = render(chart, values)
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
    values["auth"] = {**values["auth"], "apiKeys": ["k1", "k2"], "jwtSecret": "hmac"}
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


# -- issue 14: the chart's fixes, one render test each ----------------------------------------

CLIENT_PATHS = [("/ws", "Exact"), ("/sse", "Exact"), ("/api/tickets", "Exact")]


def ingress_paths(objects: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str]]:
    rules = one(objects, "Ingress")["spec"]["rules"]
    return [(p["path"], p["pathType"]) for rule in rules for p in rule["http"]["paths"]]


def test_1_public_routes_carry_the_client_paths_and_never_an_open_publish_api(chart: Any) -> None:
    redis = load_values(CHART_DIR / "ci" / "redis-values.yaml")
    assert ingress_paths(render(chart, redis)) == CLIENT_PATHS
    (rule,) = one(render(chart, load_values(CHART_DIR / "ci" / "gateway-values.yaml")), "HTTPRoute")["spec"]["rules"]
    assert [(m["path"]["value"], m["path"]["type"]) for m in rule["matches"]] == CLIENT_PATHS
    # The demo page is public only when it is on.
    assert ("/", "Exact") in ingress_paths(render(chart, {**redis, "config": {"demo": True}}))

    # Routing the publish API publicly needs an API key (or a Secret that can hold one).
    with pytest.raises(helm.HelmRenderError, match="reaches the publish API, and no API key is set"):
        render(chart, {**redis, "routes": {"publishAPI": True}})
    keyed = render(chart, {**redis, "routes": {"publishAPI": True}, "auth": {"apiKeys": ["k1"]}})
    assert ("/api/publish", "Exact") in ingress_paths(keyed) and ("/api/publish/batch", "Exact") in ingress_paths(keyed)
    assert ("/api/publish", "Exact") in ingress_paths(render(chart, load_values(CHART_DIR / "ci" / "kafka-values.yaml")))
    # A host's own paths are checked the same way, on the Ingress and on the HTTPRoute.
    catch_all = {**redis, "ingress": {**redis["ingress"], "hosts": [{"host": "h", "paths": [{"path": "/", "pathType": "Prefix"}]}]}}
    with pytest.raises(helm.HelmRenderError, match=r"public route / \(Prefix\) reaches the publish API"):
        render(chart, catch_all)
    assert ingress_paths(render(chart, {**catch_all, "auth": {"apiKeys": ["k1"]}})) == [("/", "Prefix")]
    gateway = load_values(CHART_DIR / "ci" / "gateway-values.yaml")
    gateway["httpRoute"]["paths"] = [{"path": "/api", "pathType": "Prefix"}]
    with pytest.raises(helm.HelmRenderError, match="reaches the publish API"):
        render(chart, gateway)
    for path, path_type in [("/apis", "Prefix"), ("/api/tickets", "Exact"), ("/ws", "Prefix")]:
        gateway["httpRoute"]["paths"] = [{"path": path, "pathType": path_type}]
        render(chart, gateway)


def test_2_the_internal_port_is_on_its_own_cluster_ip_service(chart: Any) -> None:
    objects = render(chart, {"service": {"type": "LoadBalancer"}})
    client = client_service(objects)
    assert client["spec"]["type"] == "LoadBalancer"
    assert [p["name"] for p in client["spec"]["ports"]] == ["client"]
    internal = internal_service(objects)
    assert internal["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"]) for p in internal["spec"]["ports"]] == [("internal", 9000)]
    assert internal["spec"]["selector"] == client["spec"]["selector"]


@pytest.mark.parametrize(("window", "expected"), [(20, 25), (45, 50), (7.5, 13)])
def test_3_min_ready_seconds_follow_the_drain_window(chart: Any, window: float, expected: int) -> None:
    deployment = one(render(chart, {"drain": {"windowSeconds": window}}), "Deployment")
    # A replacement is "available" only once the pod before it has drained (window + 5 s):
    # the Deployment drains one pod at a time, as docs/deploy.md says.
    assert deployment["spec"]["minReadySeconds"] == expected >= window + 5
    override = one(render(chart, {"rollingUpdate": {"minReadySeconds": 0}}), "Deployment")
    assert override["spec"]["minReadySeconds"] == 0


def test_4_network_policy_opens_the_client_port_and_guards_the_internal_one(chart: Any) -> None:
    assert "NetworkPolicy" not in render(chart)
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    policy = one(render(chart, {"networkPolicy": {"enabled": True, "internalFrom": monitoring}}), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    client_rule, internal_rule = policy["spec"]["ingress"]
    assert client_rule == {"ports": [{"port": "client", "protocol": "TCP"}]}  # from anywhere
    assert internal_rule == {"ports": [{"port": "internal", "protocol": "TCP"}], "from": monitoring}
    # With no peer listed, nothing but the pod itself (preStop) and the kubelet reaches the internal port.
    (only_client,) = one(render(chart, {"networkPolicy": {"enabled": True}}), "NetworkPolicy")["spec"]["ingress"]
    assert only_client["ports"][0]["port"] == "client"


def test_5_the_broker_url_is_required_from_an_existing_secret(chart: Any) -> None:
    for values in (load_values(CHART_DIR / "ci" / "kafka-values.yaml"), None):
        env = node_container(render(chart, values))["env"]
        (broker,) = [e for e in env if e["name"] == "FANLINE_BROKER"]
        name = "fanline-credentials" if values else f"{RELEASE}-fanline"
        assert broker["valueFrom"]["secretKeyRef"] == {"name": name, "key": "FANLINE_BROKER", "optional": False}


def test_6_autoscaling_names_a_metrics_source_that_can_serve_it(chart: Any) -> None:
    nats = render(chart, load_values(CHART_DIR / "ci" / "nats-values.yaml"))
    assert "HorizontalPodAutoscaler" not in nats  # KEDA owns the HPA it makes
    scaled = one(nats, "ScaledObject")
    prometheus = next(t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus")
    assert prometheus["metricType"] == "AverageValue" and prometheus["metadata"]["threshold"] == "8000"
    assert prometheus["metadata"]["query"] == 'sum(fanline_connections{namespace="realtime",service="rt-fanline-internal"})'
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["policies"][0]["value"] == 1
    with pytest.raises(helm.HelmRenderError, match="set autoscaling.keda.serverAddress"):
        render(chart, {"broker": {"url": "redis://r:6379/0"}, "autoscaling": {"enabled": True, "engine": "keda"}})
    # Nothing claims that KEDA serves the HPA's Pods metric any more.
    for text in ((CHART_DIR / "values.yaml").read_text(), (ROOT / "docs" / "deploy.md").read_text()):
        assert "prometheus-adapter or KEDA" not in text and "(or KEDA)" not in text


@pytest.mark.parametrize(
    ("image", "reference", "label"),
    [
        ({}, "ghcr.io/fanline/fanline:0.1.0", "0.1.0"),
        ({"registry": "mirror.example.com/"}, "mirror.example.com/ghcr.io/fanline/fanline:0.1.0", "0.1.0"),
        ({"digest": "sha256:" + "a" * 64}, "ghcr.io/fanline/fanline@sha256:" + "a" * 64, "0.1.0"),
        ({"tag": "1.2.3+build.7", "digest": "sha256:" + "b" * 64}, "ghcr.io/fanline/fanline@sha256:" + "b" * 64, "1.2.3_build.7"),
    ],
)
def test_7_image_registry_and_digest_keep_the_version_label_valid(
    chart: Any, image: dict[str, str], reference: str, label: str
) -> None:
    objects = render(chart, {"image": image})
    assert node_container(objects)["image"] == reference
    for docs in objects.values():
        for doc in docs:
            value = doc["metadata"]["labels"]["app.kubernetes.io/version"]
            assert value == label and re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", value)
    with pytest.raises(helm.HelmValuesError, match="/image/digest"):
        render(chart, {"image": {"digest": "latest"}})


def test_8_httproute_timeouts_are_optional_and_the_client_port_speaks_websocket(chart: Any) -> None:
    values = load_values(CHART_DIR / "ci" / "gateway-values.yaml")
    values["httpRoute"]["requestTimeout"] = ""
    (rule,) = one(render(chart, values), "HTTPRoute")["spec"]["rules"]
    assert "timeouts" not in rule
    (port,) = client_service(render(chart))["spec"]["ports"]
    assert port["appProtocol"] == "kubernetes.io/ws"


def test_9_readiness_tolerates_one_slow_broker_ping(chart: Any) -> None:
    probe = node_container(render(chart))["readinessProbe"]
    assert probe["failureThreshold"] >= 2
    with pytest.raises(helm.HelmValuesError, match="/probes/readiness/failureThreshold"):
        render(chart, {"probes": {"readiness": {"failureThreshold": 1}}})


@pytest.mark.parametrize(
    ("values", "error", "complaint"),
    [
        ({"podDisruptionBudget": {"maxUnavailable": 0}}, "HelmValuesError", "/podDisruptionBudget/maxUnavailable"),
        ({"podDisruptionBudget": {"maxUnavailable": "0%"}}, "HelmValuesError", "/podDisruptionBudget/maxUnavailable"),
        ({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}, "HelmRenderError", "cannot both be 0"),
        ({"rollingUpdate": {"maxSurge": "0%", "maxUnavailable": 0}}, "HelmRenderError", "cannot both be 0"),
    ],
)
def test_10_values_that_would_block_every_eviction_or_rollout_are_refused(
    chart: Any, values: dict[str, Any], error: str, complaint: str
) -> None:
    with pytest.raises(getattr(helm, error), match=re.escape(complaint)):
        render(chart, values)


def test_10_global_values_are_allowed_for_use_as_a_subchart(chart: Any) -> None:
    render(chart, {"global": {"imageRegistry": "mirror.example.com", "anything": [1, 2]}})
    # Scaled-down rollouts that still make progress are fine.
    render(chart, {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}, "podDisruptionBudget": {"maxUnavailable": "50%"}})


def render_text(chart: Any, values: dict[str, Any] | None = None) -> dict[str, str]:
    manifests: dict[str, str] = chart.render(values, name=RELEASE, namespace="realtime", is_install=True)
    return manifests


def test_12_user_annotations_replace_the_charts_instead_of_duplicating_keys(chart: Any) -> None:
    values = load_values(CHART_DIR / "ci" / "redis-values.yaml")
    values["ingress"]["annotations"] = {"nginx.ingress.kubernetes.io/proxy-read-timeout": "7200", "team": "rt"}
    values["podAnnotations"] = {"checksum/config": "pinned", "prometheus.io/scrape": "false"}
    texts = render_text(chart, values)
    ingress = next(t for p, t in texts.items() if p.endswith("ingress.yaml"))
    assert ingress.count("nginx.ingress.kubernetes.io/proxy-read-timeout:") == 1
    annotations = one(render(chart, values), "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200" and annotations["team"] == "rt"
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    deployment = next(t for p, t in texts.items() if p.endswith("deployment.yaml"))
    assert deployment.count("checksum/config:") == 1

    nats = load_values(CHART_DIR / "ci" / "nats-values.yaml")
    nats["service"] = {"annotations": {"traefik.ingress.kubernetes.io/service.sticky.cookie.name": "mine"}}
    texts = render_text(chart, nats)
    service = next(t for p, t in texts.items() if p.endswith("service.yaml"))
    assert service.count("service.sticky.cookie.name:") == 1
    assert client_service(render(chart, nats))["metadata"]["annotations"][
        "traefik.ingress.kubernetes.io/service.sticky.cookie.name"
    ] == "mine"


def test_12_listen_address_is_configurable_for_ipv6_clusters(chart: Any) -> None:
    objects = render(chart, {"listenAddress": "::"})
    assert one(objects, "ConfigMap")["data"]["FANLINE_HOST"] == "::"
    assert node_container(objects)["lifecycle"]["preStop"]["exec"]["command"][3] == "http://[::1]:9000"
    assert one(render(chart), "ConfigMap")["data"]["FANLINE_HOST"] == "0.0.0.0"


def test_12_examples_request_one_cpu_per_one_loop_pod_and_docs_name_the_real_labels() -> None:
    for path in CI_VALUES:
        cpu = str(load_values(path).get("resources", {}).get("requests", {}).get("cpu", "250m"))
        assert cpu.endswith("m") or float(cpu) <= 1, path.name
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert "transport label (ws, sse)" in deploy and "(websocket, sse)" not in deploy


def test_13_dashboard_and_alerts_use_only_metrics_the_node_exports(chart: Any) -> None:
    objects = render(chart, load_values(CHART_DIR / "ci" / "redis-values.yaml"))
    dashboard_map = named(objects, "ConfigMap", f"{RELEASE}-fanline-dashboard")
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["fanline.json"])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set().union(*(metric_names_in(e) for e in exprs))
    assert used <= exported_metric_names(), used - exported_metric_names()
    # Every gauge and counter the operations guide talks about has a panel.
    assert {"fanline_connections", "fanline_broker_available", "fanline_resumes_total", "fanline_draining"} <= used
    rule = one(objects, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"FanlineBrokerUnavailable", "FanlineResumeResets", "FanlineLiveGapsRepaired", "FanlineSlowConsumers",
            "FanlineNearConnectionLimit", "FanlineConnectionsImbalanced"} <= set(alerts)  # fmt: skip
    for alert in alerts.values():
        assert metric_names_in(alert["expr"]) <= exported_metric_names(), alert
        assert 'service="rt-fanline-internal"' in alert["expr"]
    # 90 % of config.maxConnections (20000 in the example).
    assert alerts["FanlineNearConnectionLimit"]["expr"].endswith("> 18000")


def test_in_cluster_rebalancer_is_off_by_default_and_least_privileged(chart: Any) -> None:
    assert "CronJob" not in render(chart)
    objects = render(chart, load_values(CHART_DIR / "ci" / "gateway-values.yaml"))
    (role,) = objects["Role"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods/proxy"], "verbs": ["get", "create"]},
    ]
    (binding,) = objects["RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    job = one(objects, "CronJob")["spec"]
    assert job["concurrencyPolicy"] == "Forbid"
    pod = job["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == binding["subjects"][0]["name"]
    (container,) = pod["containers"]
    assert container["command"] == ["fanline", "cluster", "rebalance", "--apply"]
    assert "--release=rt" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Its pod is not one of the nodes the selector finds (it would count itself, and the
    # Service and PodDisruptionBudget would take it in).
    job_labels = job["jobTemplate"]["spec"]["template"]["metadata"]["labels"].items()
    assert not one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= job_labels
    # The node pods themselves still get no API token.
    assert pod_spec(objects)["automountServiceAccountToken"] is False


def test_11_image_has_no_installer_locked_hashed_dependencies_a_pinned_base_and_oci_labels() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    # The base is pinned by digest (one ARG, used by both stages).
    (base,) = [i for i in instructions if i.startswith("ARG PYTHON_IMAGE=")]
    assert re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base)
    assert [i for i in instructions if i.startswith("FROM ")] == ["FROM ${PYTHON_IMAGE} AS builder", "FROM ${PYTHON_IMAGE}"]
    final = "\n".join(instructions[instructions.index("FROM ${PYTHON_IMAGE}") :])
    builder = "\n".join(instructions[: instructions.index("FROM ${PYTHON_IMAGE}")])
    # Dependencies only from the hashed locks; the image's venv is made without pip.
    assert "--require-hashes" in builder and "docker/requirements${EXTRAS:+-$EXTRAS}.lock" in builder
    assert "venv --without-pip /opt/fanline" in builder
    # The final stage installs nothing and removes the base's installers.
    assert "pip install" not in final
    assert "pip uninstall --yes --quiet pip setuptools wheel" in final and "ensurepip" in final
    for label in ("title", "source", "licenses", "version", "revision", "created", "base.name"):
        assert f"org.opencontainers.image.{label}=" in final, label
    # Exec-form healthcheck: a JSON array, no shell.
    (health,) = re.findall(r"HEALTHCHECK[^\n]*\n\s*CMD (.*)", text)
    assert json.loads(health)[:2] == ["python", "-c"]
    # Every lock pins with hashes, and the locks cover what pyproject.toml asks for.
    for lock in ("requirements.lock", "requirements-kubernetes.lock", "build-requirements.lock"):
        body = (ROOT / "docker" / lock).read_text()
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==\S+", body, re.MULTILINE)
        assert pins and body.count("--hash=sha256:") >= len(pins), lock
    runtime = (ROOT / "docker" / "requirements.lock").read_text().lower()
    for name in ("starlette", "uvicorn", "websockets", "redis", "nats-py", "aiokafka", "pyjwt", "uvloop", "prometheus-client"):
        assert f"\n{name}==" in runtime, name
    assert "\nkubernetes==" in (ROOT / "docker" / "requirements-kubernetes.lock").read_text()


def test_security_review_12_internal_port_on_the_pod_address_and_the_rebalancer_holds_the_internal_key(
    chart: Any,
) -> None:
    # The node binds its internal port to loopback by default: in a pod it must be the pod's
    # address, or kubelet probes, Prometheus and the API server's pod proxy could not reach it.
    for address in ("0.0.0.0", "::"):
        config = one(render(chart, {"listenAddress": address}), "ConfigMap")["data"]
        assert config["FANLINE_INTERNAL_HOST"] == config["FANLINE_HOST"] == address
    # The rebalancer calls POST /shed through the API server: without the key it is refused.
    with pytest.raises(helm.HelmRenderError, match="rebalancer.enabled needs auth.internalKey"):
        render(chart, {"rebalancer": {"enabled": True}})
    objects = render(chart, load_values(CHART_DIR / "ci" / "gateway-values.yaml"))
    secret = {k: base64.b64decode(v).decode() for k, v in one(objects, "Secret")["data"].items()}
    assert secret["FANLINE_INTERNAL_KEY"] == "change-me-internal-key"
    (container,) = one(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    (env,) = [e for e in container["env"] if e["name"] == "FANLINE_INTERNAL_KEY"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "rt-fanline", "key": "FANLINE_INTERNAL_KEY", "optional": False}
    # With a Secret of your own, the key comes from it (the Job does not start without it).
    objects = render(chart, {"existingSecret": "mine", "rebalancer": {"enabled": True}})
    (container,) = one(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "mine"
    # The key is not in the ConfigMap, and not generated (a random one would roll the pods on every render).
    assert "FANLINE_INTERNAL_KEY" not in one(render(chart), "ConfigMap")["data"]
    assert "FANLINE_INTERNAL_KEY" not in one(render(chart), "Secret")["data"]
