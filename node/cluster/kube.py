"""The Kubernetes API calls of ``fanline cluster``, through the official client.

The client (the ``kubernetes`` package, installed by ``fanline[kubernetes]``)
loads the kubeconfig or the in-cluster service account, authenticates and
carries the requests; the paths are the API's own.  Responses are read as
JSON and only the few fields the commands need are parsed (node.cluster.pods),
so the same code works against any API server version the chart supports.

A node's ``/status``, ``/shed`` and ``/drain`` are reached through the API
server's pod proxy (``/api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH``), so
the commands work from a laptop with nothing but a kubeconfig, and need no
route to the pods' internal port.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config  # the optional extra: node.cluster.cli explains when it is missing
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from ..settings import INTERNAL_KEY_HEADER, env_secret
from .pods import Pod, parse_pod

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
TIMEOUT = 10.0


class ClusterError(Exception):
    """An API call failed; the message says which and why."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Deployment:
    name: str
    replicas: int
    ready: int
    selector: dict[str, str]
    secrets: tuple[str, ...]  # Secrets loaded with envFrom


def load(kubeconfig: str | None, context: str | None) -> tuple[client.ApiClient, str]:
    """An API client and its default namespace: in-cluster when run in a pod, else the kubeconfig."""
    configuration = client.Configuration()
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
        namespace = IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.exists() else "default"
        return client.ApiClient(configuration), namespace
    try:
        config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration, persist_config=False
        )
        _, current = config.list_kube_config_contexts(config_file=kubeconfig)
    except config.ConfigException as exc:
        raise ClusterError(f"cannot load the kubeconfig: {exc}") from None
    if context is not None:
        contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
        current = next((c for c in contexts if c.get("name") == context), current)
    namespace = str((current or {}).get("context", {}).get("namespace") or "default")
    return client.ApiClient(configuration), namespace


class Cluster:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        # POST /shed from beyond a pod's loopback needs the nodes' internal key (docs/security.md).
        self.internal_key = env_secret("internal_key", os.environ)

    # -- one request ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        timeout: float = TIMEOUT,
        allow: Sequence[int] = (),
        extra_headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Send one API request; return (status, parsed JSON body).

        Statuses other than 2xx raise :class:`ClusterError`, except those in ``allow``.
        """
        headers = {"Accept": "application/json", **(extra_headers or {})}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            method, url, headers, serialized, post = self.api.param_serialize(
                method=method, resource_path=path, query_params=list(query), header_params=headers,
                body=body, auth_settings=["BearerToken"],
            )
            response = self.api.call_api(method, url, headers, serialized, post, _request_timeout=timeout)
            response.read()
        except (ApiException, HTTPError, OSError) as exc:
            raise ClusterError(f"{method} {path}: {exc}") from None
        status = int(response.status)
        raw = response.data or b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        if not 200 <= status < 300 and status not in allow:
            detail = parsed.get("message") if isinstance(parsed, dict) else parsed
            raise ClusterError(f"{method} {path}: {status} {detail}", status)
        return status, parsed

    def _ns(self, rest: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/{rest}"

    # -- pods -----------------------------------------------------------------------------

    def pods(self, selector: str) -> list[Pod]:
        _, body = self.request("GET", self._ns("pods"), [("labelSelector", selector)])
        return sorted((parse_pod(item) for item in body.get("items") or []), key=lambda p: p.name)

    def node_call(
        self, pod: Pod, method: str, path: str, query: Sequence[tuple[str, str]] = (), timeout: float = TIMEOUT
    ) -> Any:
        """A request to a node's internal port, through the API server's pod proxy.

        The internal key travels in its own header: the API server strips ``Authorization``.
        """
        _, body = self.request(
            method, self._ns(f"pods/{pod.name}:{pod.internal_port}/proxy/{path.lstrip('/')}"), query, timeout=timeout,
            extra_headers={INTERNAL_KEY_HEADER: self.internal_key} if self.internal_key else None,
        )  # fmt: skip
        return body

    def evict(self, pod: str) -> bool:
        """Ask to evict ``pod``; False when the PodDisruptionBudget refuses it now (429)."""
        eviction = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": self.namespace},
        }
        status, _ = self.request("POST", self._ns(f"pods/{pod}/eviction"), body=eviction, allow=(429,))
        return status != 429

    # -- deployments ------------------------------------------------------------------------

    def deployments(self, selector: str) -> list[Deployment]:
        _, body = self.request(
            "GET", f"/apis/apps/v1/namespaces/{self.namespace}/deployments", [("labelSelector", selector)]
        )
        return [_parse_deployment(item) for item in body.get("items") or []]

    def deployment(self, name: str) -> Deployment:
        _, body = self.request("GET", f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}")
        return _parse_deployment(body)

    # -- what preflight looks at --------------------------------------------------------------

    def secret_keys(self, name: str) -> set[str] | None:
        status, body = self.request("GET", self._ns(f"secrets/{name}"), allow=(404,))
        if status == 404:
            return None
        return set(body.get("data") or {}) | set(body.get("stringData") or {})

    def crds(self) -> dict[str, dict[str, str]]:
        """Installed CustomResourceDefinitions: name -> annotations."""
        _, body = self.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        return {
            item["metadata"]["name"]: dict(item["metadata"].get("annotations") or {})
            for item in body.get("items") or []
        }

    def custom_metrics(self) -> set[str] | None:
        """Resources served by custom.metrics.k8s.io (``pods/<metric>``), or None if nothing serves it."""
        for version in ("v1beta2", "v1beta1"):
            status, body = self.request("GET", f"/apis/custom.metrics.k8s.io/{version}", allow=(404, 503))
            if status == 200 and isinstance(body, dict):
                return {str(r.get("name")) for r in body.get("resources") or []}
        return None

    def ingress_class_controller(self, name: str) -> str | None:
        status, body = self.request("GET", f"/apis/networking.k8s.io/v1/ingressclasses/{name}", allow=(404,))
        if status == 404:
            return None
        return str((body.get("spec") or {}).get("controller", ""))


def _parse_deployment(obj: dict[str, Any]) -> Deployment:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    template = (spec.get("template") or {}).get("spec") or {}
    secrets = [
        source["secretRef"]["name"]
        for container in template.get("containers") or []
        for source in container.get("envFrom") or []
        if "secretRef" in source
    ]
    return Deployment(
        name=obj["metadata"]["name"],
        replicas=int(spec.get("replicas", 1)),
        ready=int(status.get("readyReplicas", 0)),
        selector=dict((spec.get("selector") or {}).get("matchLabels") or {}),
        secrets=tuple(secrets),
    )
