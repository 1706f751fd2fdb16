"""Locust users for Fanline: WebSocket and SSE subscribers, and a publisher.

    locust -f loadtest/locustfile.py --headless -u 20 -r 10 -t 15s --host http://127.0.0.1:8000

against a node started with ``fanline node --client-publish``.  Rows are named
by transport: ``WS receive`` / ``SSE receive`` (publish-to-receive latency of
every event; gaps, duplicates and resets are their failures), ``WS connect``,
``SSE connect``, ``WS subscribe``, ``POST publish`` (or ``BROKER publish``).

Options (each also an environment variable; see loadtest/README.md):

``--fanline-channels`` (FANLINE_CHANNELS)       comma-separated channels, default ``loadtest.0,loadtest.1``
``--fanline-channels-per-user`` (…_PER_USER)    how many of them each subscriber takes, default all
``--fanline-publish-rate`` (FANLINE_PUBLISH_RATE) publications/s per publisher user, default 10
``--fanline-publishers`` (FANLINE_PUBLISHERS)   publisher users (a fixed count), default 1
``--fanline-payload-bytes``                      padding per publication, default 64
``--fanline-broker`` (FANLINE_BROKER)           publish straight to this broker URL instead of the HTTP API
``--fanline-offset-skips``                       the broker's offsets may skip (NATS, Kafka): no gap check
``--fanline-results`` (FANLINE_RESULTS)         where to write the raw histograms, default
                                                 <temp dir>/fanline-loadtest/latency-<timestamp>.json

Every publication's data carries ``{"t": <unix time at send>}``; receivers
subtract it from their own clock, so run publishers and subscribers on hosts
with synchronised clocks (or on one host).

Distributed runs (``--processes N``, or ``--master`` with ``--worker``s): each
worker attaches its measurements to Locust's own stats reports as it goes,
and the master waits (bounded) for every worker's final report before it
writes the results; see :mod:`loadtest.merge`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.util
import json
import random
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import gevent
import requests
from locust import HttpUser, User, between, constant_throughput, events, task
from locust.env import Environment
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner

if importlib.util.find_spec("loadtest") is None:
    # Locust puts only this file's own directory on sys.path; the package
    # (and broker_adapters: the WebSocket users' client, --fanline-broker) live in its parent.  This
    # makes ``locust -f /path/to/loadtest/locustfile.py`` work from anywhere.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker_adapters.client import (  # noqa: E402
    Client,
    ClientEvent,
    Connected,
    Disconnected,
    ErrorNotice,
    Failed,
    Publication,
    State,
    StateChanged,
    Subscribed,
    SubscribeError,
)
from loadtest.merge import PART_KEY, Merge, worker_part  # noqa: E402
from loadtest.stream_checks import Report, StreamProblem, StreamTracker  # noqa: E402

# Outside any source tree: a run leaves no files in the repository, and a
# locustfile mounted read-only (a Kubernetes ConfigMap) still has somewhere
# to write.  TMPDIR moves it; --fanline-results names the file.
RESULTS = Path(tempfile.gettempdir()) / "fanline-loadtest"

# What this process measured.  A worker hands it over with each stats report
# and starts a fresh one (see _attach_report).
REPORT = Report()

# Custom message: the master asks the workers to stop and send a final report.
FINAL_REPORT = "fanline_final_report"
# Longest wait for the workers' final reports, on top of --stop-timeout.
FINAL_REPORT_GRACE = 15.0


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("Fanline")
    group.add_argument("--fanline-channels", env_var="FANLINE_CHANNELS", default="loadtest.0,loadtest.1",
                       help="Comma-separated channels to subscribe and publish to")
    group.add_argument("--fanline-channels-per-user", env_var="FANLINE_CHANNELS_PER_USER", type=int, default=0,
                       help="Channels each subscriber takes at random (0: all)")
    group.add_argument("--fanline-publish-rate", env_var="FANLINE_PUBLISH_RATE", type=float, default=10.0,
                       help="Publications per second per publisher user")
    group.add_argument("--fanline-publishers", env_var="FANLINE_PUBLISHERS", type=int, default=1,
                       help="Number of publisher users (a fixed count; the rest are subscribers)")
    group.add_argument("--fanline-payload-bytes", env_var="FANLINE_PAYLOAD_BYTES", type=int, default=64,
                       help="Padding bytes per publication")
    group.add_argument("--fanline-broker", env_var="FANLINE_BROKER", default="",
                       help="Publish straight to this broker URL (redis://, nats://, kafka://) instead of the HTTP API")
    group.add_argument("--fanline-offset-skips", env_var="FANLINE_OFFSET_SKIPS", action="store_true", default=False,
                       help="The broker's offsets may skip (NATS, Kafka): only duplicates and resets are failures")
    group.add_argument("--fanline-results", env_var="FANLINE_RESULTS", default="",
                       help="Path of the raw latency histogram JSON written at test stop "
                            "(default: <temp dir>/fanline-loadtest/latency-<timestamp>.json)")


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is not None:
        PublisherUser.fixed_count = max(0, options.fanline_publishers)
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        # Concurrent: stopping the users must not block the message loop.
        runner.register_message(FINAL_REPORT, _stop_and_report, concurrent=True)


def _options_of(user: User) -> Any:
    options = user.environment.parsed_options
    assert options is not None, "run under the locust command"
    return options


def _channels(options: Any) -> list[str]:
    return [c.strip() for c in options.fanline_channels.split(",") if c.strip()]


def _pick_channels(options: Any) -> list[str]:
    channels = _channels(options)
    k = options.fanline_channels_per_user
    return random.sample(channels, k) if 0 < k < len(channels) else channels


def _fire(environment: Environment, kind: str, name: str, ms: float, size: int = 0,
          exception: BaseException | None = None) -> None:
    environment.events.request.fire(
        request_type=kind, name=name, response_time=ms, response_length=size, exception=exception, context={}
    )


class _Subscriber(User):
    """What the WebSocket and SSE users share: the checks, the reader greenlet, reconnects."""

    abstract = True
    transport = ""
    wait_time = between(1, 2)

    def on_start(self) -> None:
        options = _options_of(self)
        self.channels = _pick_channels(options)
        self.tracker = StreamTracker(contiguous=not options.fanline_offset_skips)
        self.stopping = False
        self.reader = gevent.spawn(self._run)

    def on_stop(self) -> None:
        self.stopping = True
        self._close()
        self.reader.kill(block=False)

    @task
    def idle(self) -> None:
        # Subscribers only listen; the reader greenlet does the work.
        pass

    def _run(self) -> None:
        delay = 0.5
        while not self.stopping:
            try:
                self._connect_and_read()
                delay = 0.5
            except Exception as exc:  # any transport error: count it, back off, resume
                if self.stopping:
                    return
                _fire(self.environment, self.transport, "disconnect", 0, exception=exc)
                REPORT.problem(self.transport, "disconnect")
            gevent.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 10.0)

    def _event(self, message: dict[str, Any], size: int, now: float | None = None) -> None:
        """An event received at ``now`` (default: this moment)."""
        now = time.time() if now is None else now
        channel, event_id = message["channel"], message["id"]
        problem = self.tracker.event(channel, event_id)
        data = message.get("data")
        sent = data.get("t") if isinstance(data, dict) else None
        ms = (now - sent) * 1000.0 if isinstance(sent, (int, float)) else 0.0
        if problem is not None:
            REPORT.problem(self.transport, problem)
        elif sent is not None:
            REPORT.latency(self.transport, ms)
        _fire(self.environment, self.transport, "receive", ms, size, problem)

    def _reset(self, channel: str, event_id: str, reason: str) -> None:
        problem = self.tracker.reset(channel, event_id, reason)
        REPORT.problem(self.transport, problem)
        _fire(self.environment, self.transport, "receive", 0, exception=problem)

    def _connect_and_read(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class _ClientThread:
    """The Python client's asyncio loop: one real OS thread per Locust process, for every WebSocket user.

    Locust runs on gevent, and asyncio must not share its hub, so (as for the
    broker publisher below) the loop runs in gevent's native thread pool, on
    uvloop where installed (libuv's sockets are out of gevent's reach).  Clients
    post what they receive, with its arrival time, to a deque; a greenlet hands
    it to Locust every 50 ms, so that Locust's statistics and the stream checks
    are only ever touched from gevent.
    """

    _instance: _ClientThread | None = None

    @classmethod
    def get(cls) -> _ClientThread:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self) -> None:
        import asyncio

        from gevent.threadpool import ThreadPool

        try:
            import uvloop

            self.loop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self.pool = ThreadPool(1)
        self.pool.spawn(self.loop.run_forever)
        self.inbox: deque[Callable[[], None]] = deque()
        self.stopped = False
        self.drainer = gevent.spawn(self._drain)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def post(self, action: Callable[[], None]) -> None:
        """From the loop's thread: run ``action`` in gevent (deque appends are thread-safe)."""
        self.inbox.append(action)

    def _drain(self) -> None:
        while not self.stopped:
            for _ in range(len(self.inbox)):
                action = self.inbox.popleft()
                try:
                    action()
                except Exception as exc:  # a bug in a handler must not stop the others
                    print(f"fanline: a WebSocket user's handler failed: {exc!r}")
            gevent.sleep(0.05)


def _wait(future: concurrent.futures.Future[Any], seconds: float) -> None:
    """Wait for the loop thread without blocking gevent's hub (bounded)."""
    for _ in range(int(seconds / 0.05)):
        if future.done():
            return
        gevent.sleep(0.05)


class WebSocketUser(_Subscriber):
    """Subscribes over ``/ws`` with the Python client (broker_adapters/client.py), as an application does:
    reconnects with backoff, drain hints, resume with ``since``, the watchdog are the client's."""

    transport = "WS"
    weight = 10

    def on_start(self) -> None:
        options = _options_of(self)
        self.channels = _pick_channels(options)
        self.tracker = StreamTracker(contiguous=not options.fanline_offset_skips)
        self.stopping = False
        self.runtime = _ClientThread.get()
        self.client: Client | None = None
        self.attempt_at = self.connected_at = time.perf_counter()
        self.serving = self.runtime.submit(self._serve())

    def on_stop(self) -> None:
        self.stopping = True
        if self.client is not None:
            _wait(self.runtime.submit(self.client.close()), 5)
        _wait(self.serving, 5)

    # -- in the client's thread: note what happens, and post it to gevent -------------------------

    async def _serve(self) -> None:
        import asyncio

        self.client = Client(self.host, on_event=self._client_event)
        self.client.connect()
        await asyncio.gather(*(self._read(channel) for channel in self.channels))

    async def _read(self, channel: str) -> None:
        assert self.client is not None
        post = self.runtime.post
        subscription = self.client.subscribe(channel, on_subscribed=self._subscribed, on_error=self._refused)
        async for item in subscription:
            if isinstance(item, Publication):
                message = {"channel": channel, "id": item.id, "data": item.data}
                post(functools.partial(self._event, message, 0, time.time()))
            else:
                post(functools.partial(self._reset, channel, item.id, str(item.reason)))

    def _client_event(self, event: ClientEvent) -> None:
        now = time.perf_counter()
        if isinstance(event, StateChanged) and event.state is State.CONNECTING:
            self.attempt_at = now
        elif isinstance(event, Connected):
            self.connected_at = now
            ms = (now - self.attempt_at) * 1000
            self.runtime.post(lambda: _fire(self.environment, "WS", "connect", ms))
        elif isinstance(event, Disconnected) and not self.stopping:
            problem = ConnectionError(f"{event.code} {event.reason}")
            self.runtime.post(lambda: self._disconnected(problem))
        elif isinstance(event, (Failed, ErrorNotice)):
            problem = RuntimeError(str(event))
            self.runtime.post(lambda: _fire(self.environment, "WS", "error", 0, exception=problem))

    def _subscribed(self, confirmation: Subscribed) -> None:
        ms = (time.perf_counter() - self.connected_at) * 1000

        def report() -> None:
            if confirmation.recovered is False:
                REPORT.problem("WS", "not_recovered")
            _fire(self.environment, "WS", "subscribe", ms)

        self.runtime.post(report)

    def _refused(self, error: SubscribeError) -> None:
        problem = RuntimeError(f"{error.code}: {error.message}")
        self.runtime.post(lambda: _fire(self.environment, "WS", "error", 0, exception=problem))

    # -- in gevent ------------------------------------------------------------------------------

    def _disconnected(self, problem: Exception) -> None:
        _fire(self.environment, "WS", "disconnect", 0, exception=problem)
        REPORT.problem("WS", "disconnect")


class SSEParser:
    """Incremental ``text/event-stream`` parser (the HTML spec's rules, minus ``retry``)."""

    def __init__(self) -> None:
        self.buffer = ""
        self.event = ""
        self.data: list[str] = []
        self.id: str | None = None

    def feed(self, text: str) -> list[tuple[str, str, str | None]]:
        """Return the complete events in ``text``: (event type, data, id)."""
        out: list[tuple[str, str, str | None]] = []
        self.buffer += text.replace("\r\n", "\n")
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            if not line:
                if self.data:
                    out.append((self.event or "message", "\n".join(self.data), self.id))
                self.event, self.data = "", []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self.data.append(value)
            elif name == "event":
                self.event = value
            elif name == "id":
                self.id = value
        return out


class SSEUser(_Subscriber):
    """Reads ``/sse`` through a streaming requests response; resumes with ``Last-Event-ID``."""

    transport = "SSE"
    weight = 10

    def on_start(self) -> None:
        self.response: requests.Response | None = None
        self.last_event_id: str | None = None
        super().on_start()

    def _connect_and_read(self) -> None:
        url = self.host.rstrip("/") + "/sse?" + urlencode([("channel", c) for c in self.channels])
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        started = time.perf_counter()
        try:
            response = requests.get(url, headers=headers, stream=True, timeout=(10, 60))
            response.raise_for_status()
        except Exception as exc:
            _fire(self.environment, "SSE", "connect", (time.perf_counter() - started) * 1000, exception=exc)
            raise
        self.response = response
        parser = SSEParser()
        # chunk_size=None yields each HTTP chunk as it arrives: no added latency.
        for chunk in response.iter_content(chunk_size=None, decode_unicode=False):
            if self.stopping:
                return
            for kind, data, event_id in parser.feed(chunk.decode("utf-8")):
                if event_id is not None:
                    self.last_event_id = event_id
                message = json.loads(data)
                if kind == "fanline.subscribed":
                    _fire(self.environment, "SSE", "connect", (time.perf_counter() - started) * 1000)
                    for channel, state in message.get("channels", {}).items():
                        if state.get("recovered") is False:
                            REPORT.problem("SSE", "not_recovered")
                        self.tracker.start(channel, state.get("id"))
                elif kind == "fanline.reset":
                    self._reset(message["channel"], message["id"], message.get("reason", ""))
                elif message.get("type") == "event":
                    self._event(message, len(data))
        raise ConnectionError("SSE stream ended")

    def _close(self) -> None:
        if self.response is not None:
            try:
                self.response.close()
            except Exception:
                pass


class _BrokerPublisher:
    """:class:`broker_adapters.publisher.Publisher` on its own asyncio loop in a real OS thread.

    Locust monkey-patches the standard library for gevent; asyncio must not
    share the gevent hub, so each publish runs in gevent's native thread pool
    (one thread, one event loop, kept for the whole run).
    """

    def __init__(self, url: str) -> None:
        from gevent.threadpool import ThreadPool

        self.url = url
        self.pool = ThreadPool(1)
        self.pool.spawn(self._setup).get()

    def _setup(self) -> None:
        import asyncio

        from broker_adapters.publisher import Publisher

        self.loop = asyncio.new_event_loop()
        self.publisher = Publisher(self.url)
        self.loop.run_until_complete(self.publisher.start())

    def _publish(self, channel: str, data: object) -> str:
        return self.loop.run_until_complete(self.publisher.publish(channel, data)).event_id

    def publish(self, channel: str, data: object) -> str:
        result: str = self.pool.spawn(self._publish, channel, data).get()
        return result

    def close(self) -> None:
        try:
            self.pool.spawn(self.loop.run_until_complete, self.publisher.close()).get(timeout=5)
        finally:
            self.pool.kill()


class PublisherUser(HttpUser):
    """Publishes timestamped payloads at a fixed rate per user, over HTTP or straight to a broker."""

    fixed_count = 1
    weight = 1

    def wait_time(self) -> float:
        rate = _options_of(self).fanline_publish_rate
        return constant_throughput(rate)(self) if rate > 0 else 1.0

    def on_start(self) -> None:
        options = _options_of(self)
        self.channels = _channels(options)
        self.pad = "x" * max(0, options.fanline_payload_bytes)
        self.broker: _BrokerPublisher | None = None
        if options.fanline_broker:
            self.broker = _BrokerPublisher(options.fanline_broker)

    def on_stop(self) -> None:
        if self.broker is not None:
            self.broker.close()

    @task
    def publish(self) -> None:
        channel = random.choice(self.channels)
        data = {"t": time.time(), "p": self.pad}
        if self.broker is None:
            with self.client.post("/api/publish", json={"channel": channel, "data": data}, name="publish",
                                  catch_response=True) as response:
                if response.status_code == 200:
                    REPORT.published += 1
                    response.success()
                else:
                    response.failure(f"{response.status_code}: {response.text[:200]}")
            return
        started = time.perf_counter()
        try:
            self.broker.publish(channel, data)
        except Exception as exc:
            _fire(self.environment, "BROKER", "publish", (time.perf_counter() - started) * 1000, exception=exc)
            return
        REPORT.published += 1
        _fire(self.environment, "BROKER", "publish", (time.perf_counter() - started) * 1000)


# -- raw histograms: merged as the run goes, written at test stop ----------------------------------

_merge = Merge()
# The stop token this worker has answered (None while its test runs).
_answered: str | None = None


@events.test_start.add_listener
def _on_start(environment: Environment, **_: Any) -> None:
    global REPORT, _merge, _answered
    REPORT, _merge, _answered = Report(), Merge(), None


@events.report_to_master.add_listener
def _attach_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    """Worker: hand over what was measured since the last report (gevent does not switch inside this)."""
    global REPORT
    delta, REPORT = REPORT, Report()
    data[PART_KEY] = worker_part(delta, _answered)


@events.worker_report.add_listener
def _merge_worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    part = data.get(PART_KEY)
    if part is not None:
        _merge.add(client_id, part)


def _stop_and_report(environment: Environment, msg: Any, **_: Any) -> None:
    """Worker: stop the users, then send a report that answers the master's token."""
    global _answered
    runner = environment.runner
    assert isinstance(runner, WorkerRunner)
    runner.stop()
    _answered = msg.data
    # What Locust's own periodic reporter does, through its public API.
    data: dict[str, Any] = {}
    environment.events.report_to_master.fire(client_id=runner.client_id, data=data)
    runner.send_message("stats", data)


def _collect_final_reports(environment: Environment, runner: MasterRunner) -> list[str]:
    """Master: ask every worker for its final report and wait, bounded, until all are in; return the missing."""
    token = uuid.uuid4().hex
    _merge.expect_final(token)
    runner.send_message(FINAL_REPORT, token)
    deadline = time.monotonic() + float(environment.stop_timeout or 0) + FINAL_REPORT_GRACE
    while True:
        # A worker that quit or stopped answering heartbeats is not waited for.
        connected = [worker.id for worker in runner.clients.all if worker.state != STATE_MISSING]
        pending = _merge.pending(connected)
        if not pending or time.monotonic() >= deadline:
            return sorted(pending)
        gevent.sleep(0.1)


def _locust_counts(environment: Environment) -> dict[str, dict[str, int]]:
    """Locust's own request and failure counts per row, to set beside ours."""
    return {
        f"{entry.method} {entry.name}": {"requests": entry.num_requests, "failures": entry.num_failures}
        for entry in environment.stats.entries.values()
    }


def _results_path(environment: Environment) -> Path:
    options = environment.parsed_options
    chosen = getattr(options, "fanline_results", "") if options is not None else ""
    return Path(chosen) if chosen else RESULTS / f"latency-{time.strftime('%Y%m%d-%H%M%S')}.json"


def _write(environment: Environment, report: Report, workers: dict[str, Any] | None) -> Path:
    missing = workers["missing"] if workers else []
    content = {
        **report.to_json(),
        "complete": not missing,
        "workers": workers,
        "locust": _locust_counts(environment),
    }
    path = _results_path(environment)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


def _print_summary(report: Report, path: Path, missing: list[str]) -> None:
    print(f"fanline: published {report.published}, received {report.received}, problems {report.problems or 'none'}")
    for transport, histogram in report.histograms.items():
        figures = histogram.summary()
        print(
            f"fanline: {transport} latency p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms,"
            f" max {figures['max_ms']:.1f} ms over {figures['count']} events"
        )
    if missing:
        print(f"fanline: INCOMPLETE, no final report from workers {', '.join(missing)}")
    print(f"fanline: raw histograms in {path}")


@events.test_stop.add_listener
def _on_stop(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return  # the master asks for the final report (_stop_and_report)
    if isinstance(runner, MasterRunner):
        missing = _collect_final_reports(environment, runner)
        report = _merge.report
        workers = {"reported": len(_merge.reported), "final": len(_merge.final), "missing": missing}
        if missing:
            environment.process_exit_code = 1
    else:
        report, missing, workers = REPORT, [], None
    _print_summary(report, _write(environment, report, workers), missing)


# Locust reports a failed receive under the same row, so the failure ratio of
# "WS receive" is the share of events that revealed a gap, duplicate or reset.
__all__ = ["PublisherUser", "SSEUser", "StreamProblem", "WebSocketUser"]
