"""Who may connect, subscribe and publish.

The transports ask an :class:`AccessPolicy` and act on its answer; they hold
no rules of their own.  A refusal carries everything each transport needs to
say no in its own terms: an HTTP status for a refused handshake or request,
a close code, and an error code for an error frame.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from .protocol import CloseCode, ErrorCode
from .settings import Settings


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    code: str
    message: str
    close_code: int = CloseCode.POLICY_VIOLATION
    retry_after: int | None = None

    def body(self) -> bytes:
        return json.dumps({"error": self.code, "message": self.message}).encode()


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is on the other end of a connection.  ``user`` is None when anonymous."""

    user: str | None = None


ANONYMOUS = Identity()


class AccessPolicy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def authenticate(self, scope: MutableMapping[str, Any]) -> Identity | Refusal:
        return ANONYMOUS

    def check_subscribe(self, identity: Identity, channel: str) -> Refusal | None:
        return None

    def check_client_publish(self, identity: Identity, channel: str) -> Refusal | None:
        if not self.settings.client_publish:
            return Refusal(403, ErrorCode.PUBLISH_FORBIDDEN, "clients may not publish on this node")
        return None

    def check_api(self, request: object) -> Refusal | None:
        """May this HTTP request use the server API (publish)?"""
        return None
