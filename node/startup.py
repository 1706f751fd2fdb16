"""Why a node cannot start, in one line an operator can act on.

A misconfigured node says what is wrong and which flag fixes it, and exits; a
traceback tells a developer where, not an operator what.  Errors that are
not configuration (bugs) are not translated here and keep their traceback.

A broker that does not answer is *not* a reason to stop: brokers restart,
so a node keeps running, reports not ready and retries (node/runtime.py).
A broker URL no node could use (unknown scheme, malformed port, unknown
option, a client library that is not installed) is fatal at once.
"""

from __future__ import annotations

import enum
import errno
import json
import socket

from broker_adapters import UnknownBrokerURL
from broker_adapters.errors import ConfigError

from .auth import load_public_key
from .settings import Settings


class ExitStatus(enum.IntEnum):
    OK = 0
    UNAVAILABLE = 1  # this machine cannot serve it now: a port is taken
    CONFIG = 2  # the configuration is wrong (argparse's status for a usage error)


class StartupError(Exception):
    """A reason not to start, already phrased for the operator."""

    def __init__(self, message: str, status: ExitStatus = ExitStatus.CONFIG) -> None:
        super().__init__(message)
        self.status = status


def flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def check_files(settings: Settings) -> None:
    """Read the files the settings name, so a missing or unreadable one is named with its flag."""
    if settings.channel_rules_file:
        path = settings.channel_rules_file
        try:
            with open(path, encoding="utf-8") as handle:
                json.load(handle)
        except OSError as exc:
            raise StartupError(f"cannot read the channel rules file {path} ({flag('channel_rules_file')}): "
                               f"{exc.strerror or exc}") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise StartupError(f"the channel rules file {path} ({flag('channel_rules_file')}) is not valid JSON: "
                               f"{exc}") from None
    if settings.jwt_public_key_file:
        path = settings.jwt_public_key_file
        try:
            load_public_key(path)
        except OSError as exc:
            raise StartupError(f"cannot read the public key file {path} ({flag('jwt_public_key_file')}): "
                               f"{exc.strerror or exc}") from None
        except ValueError as exc:
            reason = str(exc).removeprefix(f"{path}: ").split(". ")[0]
            raise StartupError(f"the public key file {path} ({flag('jwt_public_key_file')}) holds no usable key: "
                               f"{reason}") from None


def configuration_error(exc: BaseException) -> StartupError | None:
    """The one-line reason for an error raised while a node is built from its settings; None for anything else."""
    if isinstance(exc, UnknownBrokerURL):
        return StartupError(f"{flag('broker')}: {exc}")
    if isinstance(exc, ConfigError):  # SettingsError, the channel rules
        return StartupError(str(exc))
    return None


def bind_error(exc: OSError, host: str, port: int, setting: str) -> StartupError:
    """Why the node could not listen on ``host:port``, naming the flag that sets it."""
    option = flag(setting)
    if exc.errno == errno.EADDRINUSE:
        return StartupError(
            f"port {port} ({option}) is already in use on {host}: another process listens there; "
            f"stop it or choose another port with {option}",
            ExitStatus.UNAVAILABLE,
        )
    if exc.errno == errno.EACCES:
        return StartupError(
            f"not allowed to listen on port {port} ({option}): ports below 1024 need privileges", ExitStatus.UNAVAILABLE
        )
    if isinstance(exc, socket.gaierror):
        return StartupError(f"cannot listen on {host} ({flag('host')}): the name does not resolve")
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"cannot listen on {host} ({flag('host')}): not an address of this machine")
    return StartupError(f"cannot listen on {host}:{port} ({option}): {exc.strerror or exc}", ExitStatus.UNAVAILABLE)
