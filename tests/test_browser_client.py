"""The JavaScript client (clients/js) in a real headless Chromium.

Pages that use the built client, as the node serves it, watch a Redis-backed
cluster of two nodes while a publisher sends about 100 events/s and the
cluster is put through a node SIGKILL and restart, a drain and restart, a
broker outage, and both nodes restarting while the broker is down (every
client reconnects into a start-up window, before the node's first broker
connection).  Every channel's stream on the page is compared with the
publications the publisher got acknowledged: 0 lost, 0 duplicated, 0
reordered, and every gap must have been reported as a reset.

On a failure, screenshots of the pages go to build/browser-failures/.
"""

from __future__ import annotations

import bisect
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from .chromium import chromium, page_server
from .processes import ROOT, NodeProcess, http_status, wait_for
from .servers import running

pytestmark = pytest.mark.slow

CHANNELS = ["chaos:a", "chaos:b", "chaos:c"]
DEMO_CHANNEL = "chaos:demo"
FAILURES = ROOT / "build" / "browser-failures"


# -- what the page saw, against what was acknowledged ----------------------------------------


@dataclass
class Verdict:
    checked: int = 0  # acknowledged publications looked for
    lost: int = 0  # missing, and no reset where they should have been
    covered: int = 0  # missing, and a reset said so
    duplicated: int = 0
    reordered: int = 0
    resets: int = 0


def check(acked: list[tuple[int, str]], events: list[tuple[int, str]], reset_points: list[int]) -> Verdict:
    """Compare one channel's stream on a page with the acknowledged publications.

    ``acked``: (seq, id) of every publication the node acknowledged, in order.
    ``events``: (seq, id) as the page received them.  ``reset_points``: for each
    reset, how many events the page had received before it.  Publications
    whose publish failed ambiguously may or may not appear; they only have to
    keep their place in the order.
    """
    verdict = Verdict(checked=len(acked), resets=len(reset_points))
    ids = [event_id for _, event_id in events]
    verdict.duplicated = len(ids) - len(set(ids))
    verdict.reordered = sum(1 for (a, _), (b, _) in zip(events, events[1:], strict=False) if b <= a)
    received = set(ids)
    seqs = [seq for seq, _ in events]
    resets = set(reset_points)
    for seq, event_id in acked:
        if event_id in received:
            continue
        # Where it belonged: after the events of lower seq.  A reset right there covers it.
        if bisect.bisect_left(seqs, seq) in resets:
            verdict.covered += 1
        else:
            verdict.lost += 1
    return verdict


def test_the_checker_itself() -> None:
    acked = [(1, "e-1"), (2, "e-2"), (3, "e-3"), (4, "e-4")]
    assert check(acked, [(1, "e-1"), (2, "e-2"), (3, "e-3"), (4, "e-4")], []) == Verdict(checked=4)
    assert check(acked, [(1, "e-1"), (3, "e-3"), (4, "e-4")], []).lost == 1
    assert check(acked, [(1, "e-1"), (3, "e-3"), (4, "e-4")], [1]) == Verdict(checked=4, covered=1, resets=1)
    assert check(acked, [(1, "e-1"), (3, "e-3"), (4, "e-4")], [2]).lost == 1, "a reset elsewhere covers nothing"
    assert check(acked, [(1, "e-1"), (2, "e-2"), (2, "e-2"), (3, "e-3"), (4, "e-4")], []).duplicated == 1
    assert check(acked, [(1, "e-1"), (3, "e-3"), (2, "e-2"), (4, "e-4")], []).reordered == 1
    # An unacknowledged publication (seq 5) that arrived anyway keeps its place.
    assert check(acked, [(1, "e-1"), (2, "e-2"), (3, "e-3"), (4, "e-4"), (5, "e-5")], []) == Verdict(checked=4)


# -- the publisher ---------------------------------------------------------------------------


@dataclass
class Publisher:
    """Publishes {"seq": n} round-robin over channels through any live node, about ``rate`` per second."""

    nodes: list[NodeProcess]
    channels: list[str]
    rate: float = 100.0
    acked: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    ambiguous: int = 0
    refused: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.acked = {channel: [] for channel in self.channels}
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        seq = dict.fromkeys(self.channels, 0)
        start = time.monotonic()
        for count in range(int(self.rate * 120)):  # bounded: two minutes' worth at most
            if self.stopping.is_set():
                return
            channel = self.channels[count % len(self.channels)]
            seq[channel] += 1
            self.publish(channel, seq[channel], count)
            pause = start + (count + 1) / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    def publish(self, channel: str, seq: int, count: int) -> None:
        body = json.dumps({"channel": channel, "data": {"seq": seq}}).encode()
        for index in range(len(self.nodes)):
            node = self.nodes[(count + index) % len(self.nodes)]
            request = urllib.request.Request(
                node.url + "/api/publish", body, {"content-type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    self.acked[channel].append((seq, json.loads(response.read())["id"]))
                    return
            except urllib.error.HTTPError as exc:
                # 503 broker_unavailable or draining.  A draining node refuses
                # before publishing; a failed broker call may have published:
                # never retry that, or the same seq could appear twice.
                if json.loads(exc.read() or b"{}").get("error") == "draining":
                    continue
                self.ambiguous += 1
                return
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                # (A node killed in the middle of its answer: IncompleteRead, an HTTPException.)
                if isinstance(getattr(exc, "reason", None), ConnectionRefusedError):
                    continue  # the node is down: nothing was published, try the other one
                self.ambiguous += 1
                return
        self.refused += 1

    def __enter__(self) -> Publisher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with page_server() as url:
        yield url


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


@contextmanager
def screenshots_on_failure(driver: Any, name: str) -> Iterator[None]:
    """On a failure, save a screenshot and the console log of every tab to build/browser-failures/."""
    try:
        yield
    except BaseException:
        FAILURES.mkdir(parents=True, exist_ok=True)
        saved = []
        for index, handle in enumerate(driver.window_handles):
            driver.switch_to.window(handle)
            path = FAILURES / f"{name}-{index}.png"
            driver.save_screenshot(str(path))
            console = "\n".join(entry["message"] for entry in driver.get_log("browser"))
            path.with_suffix(".console.txt").write_text(console)
            saved.append(str(path))
        print(f"\nscreenshots of the failing pages: {', '.join(saved)}")
        raise


# -- pages -------------------------------------------------------------------------------------


def demo_lines(driver: Any, panel: str) -> list[tuple[str, str]]:
    """(class, text) of every line of a demo page panel: "ws" or "sse"."""
    lines: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll(`#${arguments[0]}-log div`)].map((d) => [d.className, d.textContent])",
        panel,
    )
    return [(cls, text) for cls, text in lines]


EVENT_LINE = re.compile(r"^(?:\[[^\]]+\] )?(\S+) (.*)   #(\S+)$")


def demo_stream(driver: Any, panel: str, channel: str) -> tuple[list[tuple[int, str]], list[int]]:
    """The events (seq, id) and reset points a demo panel shows for ``channel``."""
    events: list[tuple[int, str]] = []
    resets: list[int] = []
    for cls, text in demo_lines(driver, panel):
        match = EVENT_LINE.match(text)
        if cls == "" and match and match.group(1) == channel:
            events.append((json.loads(match.group(2))["seq"], match.group(3)))
        elif text.startswith(f"reset on {channel}"):
            resets.append(len(events))
    return events, resets


def wait_demo(driver: Any, predicate: Any, what: str, timeout: float = 15) -> None:
    def ready() -> bool:
        return bool(predicate({panel: [text for _, text in demo_lines(driver, panel)] for panel in ("ws", "sse")}))

    wait_for(ready, timeout=timeout, what=what)


# -- the tests ---------------------------------------------------------------------------------


def test_pages_keep_every_event_through_kills_drains_restarts_and_a_broker_outage(origin: str, browser: Any) -> None:
    with running("redis") as redis:
        nodes = [NodeProcess(redis.url(), "--drain-window", "2") for _ in range(2)]
        origins = ",".join([origin, *(node.url for node in nodes)])
        for node in nodes:
            node.flags += ["--allowed-origins", origins]
            node.start()
        try:
            with screenshots_on_failure(browser, "chaos"):
                _chaos(origin, browser, redis, nodes)
        finally:
            for node in nodes:
                node.stop()


def _chaos(origin: str, driver: Any, redis: Any, nodes: list[NodeProcess]) -> None:
    a, b = nodes
    # Tab 1: the checker page, both transports, every channel, both nodes.
    query = f"nodes={a.url},{b.url}&channels={','.join(CHANNELS)}"
    driver.get(f"{origin}/checker.html?{query}")

    def subscribed() -> bool:
        return bool(
            driver.execute_script(
                "const r = window.checker && window.checker.results;"
                "return !!r && Object.values(r).every((t) => Object.values(t).every((c) => c.subscribed))"
            )
        )

    wait_for(subscribed, what="the checker page")
    # Tab 2: the demo page, served by node B, on its own channel.
    driver.switch_to.new_window("tab")
    driver.get(b.url + "/")
    driver.find_element("id", "channel").clear()
    driver.find_element("id", "channel").send_keys(DEMO_CHANNEL)
    driver.find_element("id", "join").click()
    wait_demo(
        driver,
        lambda panels: all(f"subscribed to {DEMO_CHANNEL}" in lines for lines in panels.values()),
        "the demo page subscribed",
    )
    checker_tab, demo_tab = driver.window_handles

    with Publisher([a, b], [*CHANNELS, DEMO_CHANNEL]) as publisher:
        time.sleep(1)
        a.kill()  # a crash
        a.restart()
        time.sleep(1)
        urllib.request.urlopen(urllib.request.Request(b.internal_url + "/drain", method="POST"), timeout=5)
        wait_for(lambda: _connections(b) == 0, timeout=10, what="node B drained")
        b.stop()
        b.restart()
        time.sleep(1)
        redis.kill()  # a broker outage under live connections
        time.sleep(1.5)
        redis.restart()
        time.sleep(1.5)
        # The start-up window: both nodes restart while the broker is down, so
        # every client reconnects to a node that has no broker connection yet.
        redis.kill()
        for node in (a, b):
            node.kill()
            node.start(wait_ready=False)
        time.sleep(1)
        redis.restart()
        for node in (a, b):
            wait_for(lambda node=node: http_status(node.url + "/readyz") == 200, timeout=30, what="nodes ready")
        time.sleep(1.5)
    assert publisher.thread.is_alive() is False

    # Wait until every page has every acknowledged publication (or a reset there).
    def caught_up() -> bool:
        driver.switch_to.window(checker_tab)
        results = driver.execute_script("return window.checker.results")
        for transport in results.values():
            for channel in CHANNELS:
                last = publisher.acked[channel][-1][0]
                events = transport[channel]["events"]
                if not events or events[-1][0] < last:
                    return False
        driver.switch_to.window(demo_tab)
        last = publisher.acked[DEMO_CHANNEL][-1][0]
        return all((stream := demo_stream(driver, panel, DEMO_CHANNEL)[0]) and stream[-1][0] >= last for panel in ("ws", "sse"))

    wait_for(caught_up, timeout=30, what="the pages to catch up")

    driver.switch_to.window(checker_tab)
    page = driver.execute_script("return window.checker")
    verdicts: dict[str, Verdict] = {}
    for transport, streams in page["results"].items():
        for channel in CHANNELS:
            stream = streams[channel]
            verdicts[f"{transport} {channel}"] = check(
                publisher.acked[channel], [tuple(e) for e in stream["events"]], [r[0] for r in stream["resets"]]
            )
    driver.switch_to.window(demo_tab)
    for panel in ("ws", "sse"):
        events, resets = demo_stream(driver, panel, DEMO_CHANNEL)
        verdicts[f"demo {panel}"] = check(publisher.acked[DEMO_CHANNEL], events, resets)
    demo_text = {panel: [text for _, text in demo_lines(driver, panel)] for panel in ("ws", "sse")}

    checked = sum(v.checked for v in verdicts.values())
    print(
        f"\nbrowser chaos: {checked} acknowledged deliveries checked on {len(verdicts)} streams;"
        f" publisher: {sum(map(len, publisher.acked.values()))} acked, {publisher.ambiguous} ambiguous,"
        f" {publisher.refused} refused; reconnects: "
        + ", ".join(f"{t} {len(d)}" for t, d in page["log"]["disconnects"].items())
        + f"; subscribes retried: {len(page['log']['subscribeErrors'])}"
    )
    for name, verdict in verdicts.items():
        print(f"  {name}: {verdict}")
    assert not page["log"]["failures"], page["log"]["failures"]
    assert all(v.lost == 0 and v.duplicated == 0 and v.reordered == 0 for v in verdicts.values()), verdicts
    assert checked > 1500
    # The demo page showed the drain hint, and said "dropped" when its connections went.
    assert any(line.startswith("node draining; reconnecting in") for line in demo_text["ws"]), demo_text["ws"][-20:]
    for panel in ("ws", "sse"):
        assert any(line.startswith("dropped (") for line in demo_text[panel]), demo_text[panel][-20:]
        assert not any("closed (" in line for line in demo_text[panel])


def _connections(node: NodeProcess) -> int:
    with urllib.request.urlopen(node.internal_url + "/drain", timeout=5) as response:
        return int(json.loads(response.read())["connections"])


@pytest.fixture
def memory_demo_node(origin: str) -> Iterator[NodeProcess]:
    with NodeProcess("memory://") as node:
        yield node


def test_the_demo_page_runs_on_the_client(memory_demo_node: NodeProcess, browser: Any) -> None:
    with screenshots_on_failure(browser, "demo"):
        _demo(memory_demo_node, browser)


def _demo(node: NodeProcess, driver: Any) -> None:
    driver.get(node.url + "/")
    wait_demo(driver, lambda p: all("subscribed to public:chat" in lines for lines in p.values()), "subscribed")

    # Publish from the form, with an event type no listener was registered for.
    driver.find_element("id", "text").send_keys("hello")
    driver.find_element("id", "type").send_keys("brand-new-type")
    driver.find_element("css selector", "#send button").click()
    wait_demo(
        driver,
        lambda p: all(any(line.startswith("[brand-new-type] public:chat") for line in lines) for lines in p.values()),
        "the typed event on both panels",
    )
    assert driver.find_element("id", "type").get_attribute("value") == "", "the event type box is cleared"

    # Drop both; publish while they are away; both resume and say how many they missed.
    driver.find_element("id", "ws-drop").click()
    driver.find_element("id", "sse-drop").click()
    _publish(node, "public:chat", "while away")
    wait_demo(
        driver,
        lambda p: all("subscribed to public:chat, resumed (1 missed)" in lines for lines in p.values()),
        "both resumed with 1 missed",
    )

    # A page reload resumes too (positions in sessionStorage).
    driver.execute_script("window.demo.panels.forEach((p) => p.client.close())")
    _publish(node, "public:chat", "during the reload 1")
    _publish(node, "public:chat", "during the reload 2")
    driver.refresh()
    wait_demo(
        driver,
        lambda p: all("subscribed to public:chat, resumed (2 missed)" in lines for lines in p.values()),
        "both resumed after the reload",
    )

    # A node restart: both panels say the connection dropped (the SSE one too), then resume.
    node.restart()
    wait_demo(
        driver,
        lambda p: all(any(line.startswith("dropped (") for line in lines) for lines in p.values())
        and all(any(line.startswith("reset on public:chat: epoch_changed") for line in lines) for lines in p.values()),
        "both panels dropped and reset (a restarted embedded broker is a new epoch)",
        timeout=30,
    )
    lines = demo_lines(driver, "ws") + demo_lines(driver, "sse")
    assert not any("closed (" in text for _, text in lines)
    # No request for /favicon.ico: the page brings its own icon.
    requests = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    assert not [url for url in urls if url.endswith("/favicon.ico")]
    assert any(url.endswith("/fanline/index.js") for url in urls)


def _publish(node: NodeProcess, channel: str, text: str) -> None:
    body = json.dumps({"channel": channel, "data": text}).encode()
    request = urllib.request.Request(node.url + "/api/publish", body, {"content-type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=5).close()
