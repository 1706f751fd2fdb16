"""``fanline cluster`` against our own Kubernetes API server (tests/kubeapi.py),
with real nodes on a real Redis as the pods and real WebSocket clients.

No kube-apiserver can run here: these tests show the commands drive the API
shapes they were written for, and that what they do to real nodes loses no
event; they are not a test against a real cluster (docs/deploy.md says so).

The scale-out scenario of issue 14: three pods hold every connection, three
new pods join empty, ``fanline cluster rebalance --apply`` moves connections
until every pod is within 10 % of the mean, and every client gets every
event.  The clients reconnect the way a least-connections load balancer
would send them (the Python client, broker_adapters/client.py, asks the
balancer for a URL at every attempt).  ``make test`` runs it with 300 clients;
FANLINE_SCALEOUT_CLIENTS=3000 runs the issue's full size.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker_adapters.client import Client, ClientEvent, ClientFailure, Disconnected, Reset, Subscribed
from broker_adapters.publisher import Publisher

from .kubeapi import FakeCluster
from .processes import ROOT, NodeProcess
from .servers import running

pytest.importorskip("kubernetes")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

pytestmark = pytest.mark.slow

CLIENTS = int(os.environ.get("FANLINE_SCALEOUT_CLIENTS", "300"))
CHANNELS = 20
ROUNDS = 40  # publications per channel


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Any]:
    with running("redis") as server:
        yield server


def cluster_cli(kubeconfig: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", "cluster", *args, "--kubeconfig", str(kubeconfig)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


async def cluster_cli_async(kubeconfig: Path, *args: str, timeout: float = 120) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node", "cluster", *args, "--kubeconfig", str(kubeconfig),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(timeout):
        out, _ = await process.communicate()
    return int(process.returncode or 0), out.decode()


def status_json(kubeconfig: Path) -> dict[str, Any]:
    done = cluster_cli(kubeconfig, "status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def distribution(document: dict[str, Any]) -> list[int]:
    return [p["status"]["connections"]["total"] for p in document["pods"]]


# -- clients that must lose nothing ------------------------------------------------------------


class Balancer:
    """Where a reconnecting client lands: the live pod with the fewest connections, as a
    least-connections load balancer picks (ties broken at random)."""

    def __init__(self, candidates: Callable[[], list[str]]) -> None:
        self.candidates = candidates
        self.active: dict[str, int] = {}

    def pick(self) -> str:
        """Choose, and count the connection at once, as a proxy does when it routes it."""
        urls = self.candidates()
        url = min(urls, key=lambda u: (self.active.get(u, 0), random.random()))
        self.opened(url)
        return url

    def opened(self, url: str) -> None:
        self.active[url] = self.active.get(url, 0) + 1

    def closed(self, url: str) -> None:
        self.active[url] -= 1


@dataclass
class Tally:
    received: int = 0
    lost: int = 0
    duplicates: int = 0
    resets: int = 0
    moved: int = 0
    not_recovered: int = 0
    errors: list[str] = field(default_factory=list)
    reset_reasons: list[str] = field(default_factory=list)  # "channel: reason previous -> id, after seq"


async def follow(
    url: str, channel: str, balancer: Balancer, tally: Tally, ready: asyncio.Event, release: asyncio.Event
) -> None:
    """The Python client, on ``url`` first and then wherever the balancer routes each reconnect;
    stays connected until every event came and the test ``release``s the clients."""
    first = [url]
    routed: list[str] = []  # every URL the balancer routed an attempt to
    ended = [0]  # attempts that ended (each with a Disconnected)

    def route() -> str:
        if first:
            balancer.opened(first[0])
            routed.append(first.pop())
        else:
            routed.append(balancer.pick())
        return routed[-1]

    def on_event(event: ClientEvent) -> None:
        if isinstance(event, Disconnected):  # a connection, or an attempt, the balancer counted has ended
            balancer.closed(event.url)
            ended[0] += 1
            tally.moved += 1

    def on_subscribed(confirmation: Subscribed) -> None:
        tally.not_recovered += confirmation.recovered is False

    expected = 0
    client = Client(route, on_event=on_event)
    try:
        async with client:
            subscription = client.subscribe(channel, on_subscribed=on_subscribed)
            await subscription.wait_subscribed(60)
            ready.set()
            async with asyncio.timeout(240):
                async for item in subscription:
                    if isinstance(item, Reset):
                        tally.resets += 1
                        tally.reset_reasons.append(f"{channel}: {item.reason} {item.previous} -> {item.id}, after {expected}")
                        continue
                    seq = item.data["seq"]
                    if seq < expected:
                        tally.duplicates += 1
                        continue
                    tally.lost += seq - expected
                    tally.received += 1
                    expected = seq + 1
                    if expected == ROUNDS:
                        break
                await release.wait()
    except (TimeoutError, ClientFailure) as exc:
        tally.lost += ROUNDS - expected
        tally.errors.append(f"{channel}: {exc!r} after {expected}")
    finally:
        if len(routed) > ended[0]:  # the last connection, closed by the client
            balancer.closed(routed[-1])


async def publish_rounds(broker_url: str, channels: list[str], pause: float) -> int:
    """Publish seq 0..ROUNDS-1 on every channel, straight to the broker (not through a pod that may go)."""
    async with Publisher(broker_url) as publisher:
        for seq in range(ROUNDS):
            await asyncio.gather(*(publisher.publish(c, {"seq": seq}) for c in channels))
            await asyncio.sleep(pause)
    return ROUNDS * len(channels)


async def connect_all(
    urls: list[str], channels: list[str], balancer: Balancer, tally: Tally, release: asyncio.Event
) -> list[asyncio.Task[None]]:
    tasks = []
    for start in range(0, len(urls), 200):  # in batches: a connect storm is not what is tested here
        batch = []
        for i in range(start, min(start + 200, len(urls))):
            ready = asyncio.Event()
            tasks.append(
                asyncio.create_task(follow(urls[i], channels[i % len(channels)], balancer, tally, ready, release))
            )
            batch.append(ready)
        async with asyncio.timeout(60):
            await asyncio.gather(*(r.wait() for r in batch))
    return tasks


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4 * CLIENTS + 1024), hard), hard))


# -- the scale-out scenario ---------------------------------------------------------------------


async def test_scale_out_rebalances_within_10_percent_and_loses_nothing(redis_server: Any, tmp_path: Path, channel: str) -> None:
    raise_fd_limit()
    broker = redis_server.url()
    with FakeCluster(lambda: NodeProcess(broker, "--drain-window", "2"), replicas=3) as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        old = [p.node.ws_url for p in cluster.pods.values()]
        balancer = Balancer(lambda: [p.node.ws_url for p in cluster.pods.values() if p.started and p.deleted is None])
        channels = [f"{channel}.{i}" for i in range(CHANNELS)]
        tally = Tally()
        release = asyncio.Event()
        tasks = await connect_all([old[i % 3] for i in range(CLIENTS)], channels, balancer, tally, release)

        await asyncio.to_thread(cluster.scale, 6)
        before = await asyncio.to_thread(status_json, kubeconfig)
        assert sorted(distribution(before)) == [0, 0, 0] + [CLIENTS // 3] * 3
        assert before["summary"]["balanced"] is False

        # The dry run only shows the plan.
        code, plan_text = await cluster_cli_async(kubeconfig, "rebalance")
        assert code == 0 and "dry run" in plan_text and f"{CLIENTS // 2} connections to move" in plan_text, plan_text
        assert (await asyncio.to_thread(status_json, kubeconfig))["summary"]["connections"] == CLIENTS

        publishing = asyncio.create_task(publish_rounds(broker, channels, pause=0.25))
        code, output = await cluster_cli_async(
            kubeconfig, "rebalance", "--apply", "--window", "3", "--settle", "60", "--max-rounds", "3", timeout=300
        )
        # Measured while the clients are still connected: they stay until released.
        after = await asyncio.to_thread(status_json, kubeconfig)
        print(f"\nscale-out with {CLIENTS} clients: before {distribution(before)}, after {distribution(after)}")
        print(output)
        published = await publishing
        release.set()
        async with asyncio.timeout(300):
            await asyncio.gather(*tasks)
        print(f"published {published} ({published * CLIENTS // CHANNELS} deliveries due), received {tally.received}, "
              f"lost {tally.lost}, moved {tally.moved}, imbalance after {after['summary']['imbalance']:.1%}")
        assert code == 0, output
        assert "balanced: every serving pod is within 10% of the mean" in output
        assert after["summary"]["balanced"] and after["summary"]["imbalance"] <= 0.10, after["summary"]
        assert after["summary"]["connections"] == CLIENTS
        assert tally.lost == 0 and tally.duplicates == 0 and tally.resets == 0 and not tally.errors, tally
        assert tally.not_recovered == 0
        assert tally.received == CLIENTS * ROUNDS
        assert CLIENTS // 2 <= tally.moved <= CLIENTS // 2 + CLIENTS // 10


# -- restart: one pod at a time ------------------------------------------------------------------


async def test_restart_replaces_pods_one_at_a_time_and_loses_nothing(redis_server: Any, tmp_path: Path, channel: str) -> None:
    broker = redis_server.url()
    with FakeCluster(lambda: NodeProcess(broker, "--drain-window", "1"), replicas=3) as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        original = sorted(cluster.pods, key=lambda n: cluster.pods[n].created)
        urls = [p.node.ws_url for p in cluster.pods.values()]
        balancer = Balancer(lambda: [p.node.ws_url for p in cluster.pods.values() if p.started and p.deleted is None])
        channels = [f"{channel}.{i}" for i in range(3)]
        tally = Tally()
        release = asyncio.Event()
        release.set()  # leave once every event came
        tasks = await connect_all([urls[i % 3] for i in range(30)], channels, balancer, tally, release)
        publishing = asyncio.create_task(publish_rounds(broker, channels, pause=0.3))
        code, output = await cluster_cli_async(kubeconfig, "restart", "--timeout", "60", timeout=180)
        await publishing
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)
        assert code == 0, output
        assert f"restarting {cluster.deployment}: 3 pods, one at a time" in output
        assert not set(original) & set(cluster.pods) and len(cluster.pods) == 3
        # Strictly one at a time: each eviction waits for the previous pod to be gone
        # and its replacement to be Ready.
        events = [(e.what, e.pod) for e in cluster.events if e.what != "ready" or e.pod not in original]
        evictions = [pod for what, pod in events if what == "evicted"]
        assert sorted(evictions) == sorted(original)
        for earlier, later in zip(evictions, evictions[1:], strict=False):
            position = events.index(("evicted", later))
            before = events[:position]
            assert ("gone", earlier) in before
            assert sum(1 for what, _ in before if what == "ready") >= evictions.index(later)
        assert tally.lost == 0 and tally.duplicates == 0 and not tally.errors, tally
        assert tally.moved >= 30


async def test_restart_refuses_a_degraded_deployment(redis_server: Any, tmp_path: Path) -> None:
    with FakeCluster(lambda: NodeProcess(redis_server.url()), replicas=2) as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        cluster.replicas = 3  # one pod missing
        done = cluster_cli(kubeconfig, "restart")
        assert done.returncode == 1 and "only 2 of 3 pods are ready" in done.stdout, done.stdout
        assert not any(path.endswith("/eviction") for _, path in cluster.requests)


# -- status and preflight ----------------------------------------------------------------------


def test_status_reads_every_pod_through_the_pod_proxy(tmp_path: Path) -> None:
    with FakeCluster(lambda: NodeProcess("memory://"), replicas=2) as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        done = cluster_cli(kubeconfig, "status", "--release", "rt")
        assert done.returncode == 0, done.stderr
        for name in cluster.pods:
            assert name in done.stdout
        assert "2 pods (2 serving), 0 connections" in done.stdout and "memory ok" in done.stdout
        proxied = [path for method, path in cluster.requests if "/proxy/" in path]
        assert len(proxied) == 2 and all(p.endswith(":9000/proxy/status") for p in proxied)
        # A wrong credential is an error with the API server's answer, not a traceback.
        cluster.token = "rotated"
        done = cluster_cli(kubeconfig, "status")
        assert done.returncode == 1 and "401" in done.stderr and "Traceback" not in done.stderr


def test_preflight_checks_what_the_values_need(tmp_path: Path) -> None:
    chart = ROOT / "helm" / "fanline" / "ci"
    with FakeCluster(lambda: NodeProcess("memory://"), replicas=1) as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        kafka = cluster_cli(kubeconfig, "preflight", "-f", str(chart / "kafka-values.yaml"))
        assert kafka.returncode == 1
        assert "Secret fanline-credentials not found" in kafka.stdout and "IngressClass nginx not found" in kafka.stdout

        cluster.secrets["fanline-credentials"] = {"FANLINE_API_KEYS": "k1"}
        cluster.secrets["fanline-jwt-public-key"] = {"public.pem": "-----BEGIN PUBLIC KEY-----"}
        cluster.ingress_classes["nginx"] = "k8s.io/ingress-nginx"
        kafka = cluster_cli(kubeconfig, "preflight", "-f", str(chart / "kafka-values.yaml"))
        assert kafka.returncode == 1 and "has no key FANLINE_BROKER" in kafka.stdout, kafka.stdout
        cluster.secrets["fanline-credentials"]["FANLINE_BROKER"] = "kafka://kafka:9092"
        kafka = cluster_cli(kubeconfig, "preflight", "-f", str(chart / "kafka-values.yaml"))
        assert kafka.returncode == 0, kafka.stdout

        values = tmp_path / "hpa.yaml"
        values.write_text("autoscaling: {enabled: true}\nserviceMonitor: {enabled: true}\n")
        hpa = cluster_cli(kubeconfig, "preflight", "-f", str(values))
        assert hpa.returncode == 1 and "custom.metrics.k8s.io is not served" in hpa.stdout
        assert "CRD servicemonitors.monitoring.coreos.com is not installed" in hpa.stdout
        cluster.custom_metrics = ["pods/fanline_connections"]
        cluster.crds["servicemonitors.monitoring.coreos.com"] = {}
        hpa = cluster_cli(kubeconfig, "preflight", "-f", str(values))
        assert hpa.returncode == 0 and "2 of 2 checks passed" in hpa.stdout, hpa.stdout


def test_the_api_server_serves_valid_kubernetes_objects() -> None:
    """Its objects pass the same schema validation as the chart's manifests."""
    with FakeCluster(lambda: NodeProcess("memory://"), replicas=1) as cluster:
        pod = next(iter(cluster.pods.values()))
        cluster.secrets["s"] = {"FANLINE_BROKER": "redis://r:6379/0"}
        cluster.ingress_classes["nginx"] = "k8s.io/ingress-nginx"
        cluster.crds["servicemonitors.monitoring.coreos.com"] = {}
        objects = [
            cluster.pod_json(pod),
            cluster.deployment_json(),
            cluster.route("GET", "/api/v1/namespaces/realtime/secrets/s", "", b"")[1],
            cluster.route("GET", "/apis/networking.k8s.io/v1/ingressclasses/nginx", "", b"")[1],
            *cluster.route("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "", b"")[1]["items"],
        ]
        for obj in objects:
            kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_cluster_commands_name_the_extra_when_kubernetes_is_missing() -> None:
    code = "import sys; sys.modules['kubernetes'] = None; from node.cli import main; sys.exit(main(['cluster', 'status']))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "pip install 'fanline[kubernetes]'" in done.stderr
