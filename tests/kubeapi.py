"""A small Kubernetes API server of our own, for testing ``fanline cluster``.

No kube-apiserver can be installed on these machines, so this serves, on
127.0.0.1, the real API's paths and JSON shapes for exactly the endpoints the
commands use, with real Fanline node processes as the pods:

- ``GET /api/v1/namespaces/NS/pods?labelSelector=`` (PodList), ``GET .../pods/NAME``;
- the pod proxy, ``/api/v1/namespaces/NS/pods/NAME[:PORT]/proxy/PATH``, forwarded
  to the node's real internal (9000) or client (8000) port;
- ``POST .../pods/NAME/eviction`` (honouring a PodDisruptionBudget of
  maxUnavailable 1: 429 otherwise) and ``DELETE .../pods/NAME``: the pod gets a
  deletionTimestamp, its preStop hook runs (``POST /drain``, then wait until it
  is empty or the window + 5 s), then SIGTERM; meanwhile a "ReplicaSet"
  starts a replacement process, Ready once its ``/readyz`` answers 200;
- ``GET /apis/apps/v1/namespaces/NS/deployments[/NAME]``;
- ``GET /api/v1/namespaces/NS/secrets/NAME``, ``GET /apis/networking.k8s.io/v1/ingressclasses/NAME``,
  ``GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions``, and the discovery
  document of ``custom.metrics.k8s.io``.

Anything else is a 404 ``Status``, as from a real server; requests without the
bearer token of the kubeconfig it writes are 401.  It does not schedule, watch
or persist anything, and it is not a conformance target: it is what the
commands were tested against (docs/deploy.md says so).
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .processes import NodeProcess, http_status

CONTAINER_CLIENT_PORT = 8000
CONTAINER_INTERNAL_PORT = 9000


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        **({"details": details} if details else {}),
        "code": code,
    }


@dataclass
class FakePod:
    name: str
    node: NodeProcess
    created: str = field(default_factory=_now)
    uid: str = field(default_factory=lambda: secrets.token_hex(16))
    deleted: str | None = None
    started: bool = False  # the process answers /healthz

    def ready(self) -> bool:
        return self.started and self.deleted is None and http_status(self.node.internal_url + "/readyz", 1.0) == 200


@dataclass
class Event:
    """What the fake control plane did, in order, for tests to check sequences."""

    at: float
    what: str  # evicted, gone, ready
    pod: str


class FakeCluster:
    """One namespace with one Deployment of real Fanline nodes, served as the Kubernetes API."""

    def __init__(
        self,
        node_factory: Callable[[], NodeProcess],
        replicas: int,
        namespace: str = "realtime",
        release: str = "rt",
    ) -> None:
        self.node_factory = node_factory
        self.namespace = namespace
        self.release = release
        self.deployment = f"{release}-fanline"
        self.replicas = replicas
        self.template_hash = secrets.token_hex(5)[:10]
        self.token = secrets.token_urlsafe(24)
        self.pods: dict[str, FakePod] = {}
        self.events: list[Event] = []
        self.secrets: dict[str, dict[str, str]] = {}
        self.crds: dict[str, dict[str, str]] = {}
        self.custom_metrics: list[str] | None = None
        self.ingress_classes: dict[str, str] = {}
        self.pdb_max_unavailable = 1
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._threads: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None

    # -- the pods ---------------------------------------------------------------------------

    @property
    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": "fanline", "app.kubernetes.io/instance": self.release}

    def _new_pod(self) -> FakePod:
        name = f"{self.deployment}-{self.template_hash}-{secrets.token_hex(3)[:5]}"
        pod = FakePod(name, self.node_factory())
        with self._lock:
            self.pods[name] = pod
        return pod

    def _boot(self, pod: FakePod) -> None:
        pod.node.start()
        pod.started = True
        with self._lock:
            self.events.append(Event(time.monotonic(), "ready", pod.name))

    def scale(self, replicas: int) -> list[FakePod]:
        """Set the Deployment's replicas and start the new pods (blocks until they are Ready)."""
        with self._lock:
            self.replicas = replicas
            missing = replicas - sum(1 for p in self.pods.values() if p.deleted is None)
        new = [self._new_pod() for _ in range(max(missing, 0))]
        threads = [threading.Thread(target=self._boot, args=(p,)) for p in new]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        return new

    def _terminate(self, pod: FakePod) -> None:
        """What the kubelet does: preStop (fanline drain --wait), then SIGTERM, then the pod is gone."""
        node = pod.node
        try:
            with urllib.request.urlopen(urllib.request.Request(node.internal_url + "/drain", data=b"", method="POST"), timeout=5) as r:
                window = float(json.loads(r.read())["window"])
            deadline = time.monotonic() + window + 5
            while time.monotonic() < deadline:
                with urllib.request.urlopen(node.internal_url + "/drain", timeout=5) as r:
                    if not json.loads(r.read())["connections"]:
                        break
                time.sleep(0.2)
        except (urllib.error.URLError, OSError):
            pass
        node.stop()
        with self._lock:
            self.pods.pop(pod.name, None)
            self.events.append(Event(time.monotonic(), "gone", pod.name))

    def _delete(self, pod: FakePod) -> None:
        with self._lock:
            if pod.deleted is not None:
                return
            pod.deleted = _now()
            self.events.append(Event(time.monotonic(), "evicted", pod.name))
            replacement = self._new_pod()
        # The ReplicaSet replaces a terminating pod at once (it does not count it).
        for target, arg in ((self._terminate, pod), (self._boot, replacement)):
            thread = threading.Thread(target=target, args=(arg,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def pod_json(self, pod: FakePod) -> dict[str, Any]:
        ready = pod.ready()
        condition = "True" if ready else "False"
        metadata: dict[str, Any] = {
            "name": pod.name,
            "generateName": f"{self.deployment}-{self.template_hash}-",
            "namespace": self.namespace,
            "uid": pod.uid,
            "resourceVersion": str(int(time.time() * 1000)),
            "creationTimestamp": pod.created,
            "labels": {**self.labels, "pod-template-hash": self.template_hash},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{self.deployment}-{self.template_hash}",
                    "uid": "00000000-0000-0000-0000-000000000001",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if pod.deleted:
            metadata["deletionTimestamp"] = pod.deleted
            metadata["deletionGracePeriodSeconds"] = 35
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {
                "containers": [
                    {
                        "name": "node",
                        "image": "ghcr.io/fanline/fanline:0.1.0",
                        "ports": [
                            {"name": "client", "containerPort": CONTAINER_CLIENT_PORT, "protocol": "TCP"},
                            {"name": "internal", "containerPort": CONTAINER_INTERNAL_PORT, "protocol": "TCP"},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "internal"}, "periodSeconds": 5},
                    }
                ],
                "terminationGracePeriodSeconds": 35,
                "serviceAccountName": self.deployment,
            },
            "status": {
                "phase": "Running" if pod.started else "Pending",
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastTransitionTime": pod.created},
                    {"type": "Ready", "status": condition, "lastTransitionTime": pod.created},
                    {"type": "ContainersReady", "status": condition, "lastTransitionTime": pod.created},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": pod.created},
                ],
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": pod.created,
                "containerStatuses": [
                    {
                        "name": "node",
                        "ready": ready,
                        "restartCount": 0,
                        "image": "ghcr.io/fanline/fanline:0.1.0",
                        "imageID": "",
                        "started": pod.started,
                        "state": {"running": {"startedAt": pod.created}} if pod.started else {"waiting": {"reason": "ContainerCreating"}},
                    }
                ],
            },
        }

    def deployment_json(self) -> dict[str, Any]:
        with self._lock:
            pods = list(self.pods.values())
        ready = sum(1 for p in pods if p.ready())
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": self.deployment,
                "namespace": self.namespace,
                "uid": "00000000-0000-0000-0000-000000000002",
                "generation": 1,
                "creationTimestamp": "2026-12-01T10:00:00Z",
                "labels": {**self.labels, "app.kubernetes.io/managed-by": "Helm"},
            },
            "spec": {
                "replicas": self.replicas,
                "selector": {"matchLabels": self.labels},
                "minReadySeconds": 25,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {
                    "metadata": {"labels": self.labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "node",
                                "image": "ghcr.io/fanline/fanline:0.1.0",
                                "envFrom": [
                                    {"configMapRef": {"name": self.deployment}},
                                    {"secretRef": {"name": self.deployment}},
                                ],
                            }
                        ]
                    },
                },
            },
            "status": {
                "observedGeneration": 1,
                "replicas": len(pods),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "updatedReplicas": len(pods),
            },
        }

    # -- the HTTP server ---------------------------------------------------------------------

    def start(self) -> FakeCluster:
        cluster = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("authorization") != f"Bearer {cluster.token}":
                    self._send(401, status_object(401, "Unauthorized", "Unauthorized"))
                    return
                url = urllib.parse.urlsplit(self.path)
                cluster.requests.append((self.command, url.path))
                code, payload, content_type = cluster.route(self.command, url.path, url.query, body)
                self._send(code, payload, content_type)

            def _send(self, code: int, payload: Any, content_type: str = "application/json") -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        self.scale(self.replicas)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "operator", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "operator", "namespace": self.namespace}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(30)
        with self._lock:
            pods = list(self.pods.values())
        for pod in pods:
            pod.node.stop()

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- routing ---------------------------------------------------------------------------------

    def route(self, method: str, path: str, query: str, body: bytes) -> tuple[int, Any, str]:
        params = dict(urllib.parse.parse_qsl(query))
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        ns_prefix = ["api", "v1", "namespaces", self.namespace]
        if parts[:4] == ns_prefix and len(parts) >= 5:
            rest = parts[4:]
            if rest[0] == "pods":
                return self._pods(method, rest[1:], query, params, body)
            if rest[0] == "secrets" and len(rest) == 2 and method == "GET":
                data = self.secrets.get(rest[1])
                if data is None:
                    return self._not_found("secrets", rest[1])
                encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
                return 200, {
                    "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": encoded,
                    "metadata": {"name": rest[1], "namespace": self.namespace, "creationTimestamp": "2026-12-01T10:00:00Z"},
                }, "application/json"  # fmt: skip
        apps = ["apis", "apps", "v1", "namespaces", self.namespace, "deployments"]
        if parts[:6] == apps and method == "GET":
            if len(parts) == 6:
                wanted = self._selector(params.get("labelSelector", ""))
                items = [self.deployment_json()] if wanted.items() <= {**self.labels, "app.kubernetes.io/managed-by": "Helm"}.items() else []
                return 200, {"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {}, "items": items}, "application/json"
            if len(parts) == 7 and parts[6] == self.deployment:
                return 200, self.deployment_json(), "application/json"
            return self._not_found("deployments.apps", parts[-1])
        if parts == ["apis", "apiextensions.k8s.io", "v1", "customresourcedefinitions"] and method == "GET":
            return 200, {
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinitionList", "metadata": {},
                "items": [self._crd(name, annotations) for name, annotations in sorted(self.crds.items())],
            }, "application/json"  # fmt: skip
        if parts[:3] == ["apis", "networking.k8s.io", "v1"] and len(parts) == 5 and parts[3] == "ingressclasses":
            controller = self.ingress_classes.get(parts[4])
            if controller is None:
                return self._not_found("ingressclasses.networking.k8s.io", parts[4])
            return 200, {
                "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                "metadata": {"name": parts[4]}, "spec": {"controller": controller},
            }, "application/json"  # fmt: skip
        if parts[:2] == ["apis", "custom.metrics.k8s.io"] and len(parts) == 3 and self.custom_metrics is not None:
            return 200, {
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"custom.metrics.k8s.io/{parts[2]}",
                "resources": [
                    {"name": name, "singularName": "", "namespaced": True, "kind": "MetricValueList", "verbs": ["get"]}
                    for name in self.custom_metrics
                ],
            }, "application/json"  # fmt: skip
        return 404, status_object(404, "NotFound", "the server could not find the requested resource"), "application/json"

    @staticmethod
    def _selector(raw: str) -> dict[str, str]:
        return dict(term.split("=", 1) for term in raw.split(",") if "=" in term)

    def _not_found(self, kind: str, name: str) -> tuple[int, Any, str]:
        return 404, status_object(404, "NotFound", f'{kind} "{name}" not found', name=name, kind=kind), "application/json"

    @staticmethod
    def _crd(name: str, annotations: dict[str, str]) -> dict[str, Any]:
        plural, group = name.split(".", 1)
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {
                "group": group,
                "names": {"plural": plural, "kind": plural.rstrip("s").capitalize(), "singular": plural.rstrip("s")},
                "scope": "Namespaced",
                "versions": [
                    {"name": "v1", "served": True, "storage": True,
                     "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
                ],
            },
        }  # fmt: skip

    def _pods(self, method: str, rest: list[str], query: str, params: dict[str, str], body: bytes) -> tuple[int, Any, str]:
        if not rest:
            if method != "GET":
                return 405, status_object(405, "MethodNotAllowed", "method not allowed"), "application/json"
            wanted = self._selector(params.get("labelSelector", ""))
            with self._lock:
                pods = [p for p in self.pods.values() if wanted.items() <= {**self.labels, "pod-template-hash": self.template_hash}.items()]
            return 200, {
                "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(int(time.time() * 1000))},
                "items": [self.pod_json(p) for p in pods],
            }, "application/json"  # fmt: skip
        name, _, port = rest[0].partition(":")
        with self._lock:
            pod = self.pods.get(name)
        if pod is None:
            return self._not_found("pods", name)
        if len(rest) == 1:
            if method == "GET":
                return 200, self.pod_json(pod), "application/json"
            if method == "DELETE":
                self._delete(pod)
                return 200, self.pod_json(pod), "application/json"
        if rest[1:] == ["eviction"] and method == "POST":
            eviction = json.loads(body or b"{}")
            if eviction.get("kind") != "Eviction" or eviction.get("metadata", {}).get("name") != name:
                return 400, status_object(400, "BadRequest", "body is not an Eviction for this pod"), "application/json"
            with self._lock:
                disrupted = sum(1 for p in self.pods.values() if p.deleted or not p.ready())
            if pod.deleted is None and disrupted >= self.pdb_max_unavailable:
                return 429, status_object(
                    429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.",
                    causes=[{"reason": "DisruptionBudget", "message": f"The disruption budget {self.deployment} needs 0 healthy pods"}],
                ), "application/json"  # fmt: skip
            self._delete(pod)
            return 201, status_object(201, "", ""), "application/json"
        if len(rest) >= 2 and rest[1] == "proxy":
            target = {"": CONTAINER_CLIENT_PORT, str(CONTAINER_CLIENT_PORT): pod.node.port,
                      str(CONTAINER_INTERNAL_PORT): pod.node.internal_port}.get(port)  # fmt: skip
            if target is None or not pod.started:
                return 503, status_object(503, "ServiceUnavailable", f"no endpoints for {name}:{port}"), "application/json"
            if target == CONTAINER_CLIENT_PORT:
                target = pod.node.port
            url = f"http://127.0.0.1:{target}/" + "/".join(rest[2:]) + (f"?{query}" if query else "")
            request = urllib.request.Request(url, data=body if method != "GET" else None, method=method)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, response.read(), response.headers.get("content-type", "application/json")
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read(), exc.headers.get("content-type", "text/plain")
            except (urllib.error.URLError, OSError) as exc:
                return 503, status_object(503, "ServiceUnavailable", f"error trying to reach service: {exc}"), "application/json"
        return self._not_found("pods", name)
