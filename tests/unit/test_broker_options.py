"""Broker URL options (broker_adapters/options.py): one parser for every adapter, and every option documented."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker_adapters import UnknownBrokerURL, open_broker
from broker_adapters.kafka import KafkaBroker, KafkaOptions
from broker_adapters.memory import MemoryBroker, MemoryOptions
from broker_adapters.nats import NatsBroker, NatsOptions
from broker_adapters.options import option_types, parse_options
from broker_adapters.redis import RedisBroker, RedisOptions

DOCS = Path(__file__).resolve().parents[2] / "docs"


@dataclass(frozen=True, slots=True)
class Sample:
    size: int = 3
    ttl: float = 1.5
    name: str = "x"
    flag: bool = False

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError("size must be >= 0")


def test_defaults_without_a_query() -> None:
    assert parse_options("memory://", Sample) == Sample()


def test_each_type_is_parsed() -> None:
    parsed = parse_options("x://h?size=7&ttl=0.25&name=a%20b&flag=true", Sample)
    assert parsed == Sample(size=7, ttl=0.25, name="a b", flag=True)


@pytest.mark.parametrize("word,value", [("1", True), ("yes", True), ("ON", True), ("0", False), ("false", False)])
def test_booleans_in_words(word: str, value: bool) -> None:
    assert parse_options(f"x://?flag={word}", Sample).flag is value


@pytest.mark.parametrize(
    "query,message",
    [
        ("colour=red", "unknown broker URL option 'colour'; known options: flag, name, size, ttl"),
        ("size=1&size=2", "given twice"),
        ("size=1.5", "size='1.5' is not a whole number"),
        ("size=", "is not a whole number"),
        ("ttl=nan", "is not a finite number"),
        ("ttl=inf", "is not a finite number"),
        ("flag=maybe", "is not true or false"),
        ("size=-1", "x broker URL: size must be >= 0"),
    ],
)
def test_bad_options_are_refused_by_name(query: str, message: str) -> None:
    with pytest.raises(UnknownBrokerURL, match=re.escape(message)):
        parse_options(f"x://h?{query}", Sample)


def test_an_unknown_scheme_is_refused() -> None:
    with pytest.raises(UnknownBrokerURL, match="unknown broker URL scheme 'mqtt'"):
        open_broker("mqtt://h")


@pytest.mark.parametrize(
    "url,cls,options",
    [
        ("memory://?history_size=5&meta_ttl=60", MemoryBroker, MemoryOptions(history_size=5, meta_ttl=60)),
        ("redis://127.0.0.1:1/2?prefix=p&pool_size=3", RedisBroker, RedisOptions(prefix="p", pool_size=3)),
        ("nats://a:1,b:2?stream=S&replicas=3", NatsBroker, NatsOptions(stream="S", replicas=3)),
        ("kafka://a:1,b:2?partitions=4&idempotent=false", KafkaBroker, KafkaOptions(partitions=4, idempotent=False)),
    ],
)
def test_every_adapter_takes_its_options_from_the_url(url: str, cls: type, options: object) -> None:
    broker = open_broker(url)
    assert isinstance(broker, cls) and broker.options == options  # type: ignore[attr-defined]


def test_nats_servers_keep_their_credentials() -> None:
    broker = open_broker("tls://user:pw@a:1,b:2?stream=S")
    assert isinstance(broker, NatsBroker)
    assert broker.servers == ["tls://user:pw@a:1", "tls://user:pw@b:2"]


@pytest.mark.parametrize(
    "url",
    [
        "memory://?history_ttl=0",
        "redis://h?prefix=a%7Bb",
        "redis://h?command_timeout=0",
        "nats://h?storage=tape",
        "nats://h?live_prefix=fanline.x",
        "kafka://h?partitions=0",
        "kafka://h?check_interval=0",
        "kafka://",
    ],
)
def test_out_of_range_values_are_refused(url: str) -> None:
    with pytest.raises(UnknownBrokerURL):
        open_broker(url)


# Where each adapter's options are documented, one table row per option.
PAGES = {
    MemoryOptions: DOCS / "configuration.md",
    RedisOptions: DOCS / "brokers" / "redis.md",
    NatsOptions: DOCS / "brokers" / "nats.md",
    KafkaOptions: DOCS / "brokers" / "kafka.md",
}


@pytest.mark.parametrize(
    "cls,option", [(cls, option) for cls in PAGES for option in sorted(option_types(cls))], ids=str
)
def test_every_url_option_is_documented(cls: type, option: str) -> None:
    page = PAGES[cls]
    assert f"| `{option}` |" in page.read_text(encoding="utf-8"), f"URL option {option!r} has no row in {page}"
