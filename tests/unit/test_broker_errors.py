"""One translation from a client library's exceptions to the broker errors (broker_adapters/library_errors.py)."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaConnectionError
from nats.errors import NoServersError
from redis.exceptions import ConnectionError as RedisConnectionError

from broker_adapters import BrokerError, BrokerUnavailable
from broker_adapters.kafka_topic import KAFKA
from broker_adapters.library_errors import LibraryErrors
from broker_adapters.nats_stream import NATS
from broker_adapters.redis_live import REDIS


@pytest.mark.parametrize(
    "library,error",
    [
        (REDIS, RedisConnectionError("Connection refused")),
        (REDIS, TimeoutError()),
        (NATS, NoServersError()),
        (NATS, OSError("unreachable")),
        (KAFKA, KafkaConnectionError("no route")),
    ],
)
def test_library_failures_become_broker_unavailable(library: LibraryErrors, error: BaseException) -> None:
    with pytest.raises(BrokerUnavailable) as raised:
        with library.unavailable("publish"):
            raise error
    assert raised.value.__cause__ is error
    assert str(raised.value).startswith(f"{library.library} publish failed: {type(error).__name__}")


def test_the_adapters_own_errors_pass_untouched() -> None:
    mine = BrokerError("the topic does not exist and create_topic is off")
    with pytest.raises(BrokerError) as raised:
        with KAFKA.unavailable("metadata request", also=(Exception,)):
            raise mine
    assert raised.value is mine


def test_other_errors_are_not_translated_unless_asked() -> None:
    with pytest.raises(KeyError):
        with REDIS.unavailable("history read"):
            raise KeyError("a bug, not the broker")
    with pytest.raises(BrokerUnavailable, match="AssertionError"):
        with KAFKA.unavailable("publish", also=(AssertionError,)):
            raise AssertionError


def test_cleanup_ignores_only_the_librarys_errors() -> None:
    with NATS.ignored():
        raise OSError("already closed")
    with pytest.raises(ValueError):
        with NATS.ignored():
            raise ValueError("a bug")
