"""Secrets out of everything the node writes: log lines, metric labels, error messages.

Two rules, applied to any text on its way out:

- the password of any URL (``scheme://user:PASSWORD@host``) becomes ``***``,
  whoever wrote the URL (a setting, a client library's error message);
- every secret value the node was configured with (:func:`register`, called
  once at start with :meth:`node.settings.Settings.secret_values`) becomes
  ``***`` wherever it appears.

The registry is process-wide on purpose: logging is process-wide too, and a
secret must be masked in a line written by any library.  Values shorter than
:data:`MIN_LENGTH` are not registered: masking every ``a`` would wreck the
log and hide nothing worth hiding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
MIN_LENGTH = 4

# scheme://user:password@ — the password is anything up to the '@' that ends the userinfo.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)(?P<password>[^\s/@]+)@")

_secrets: list[str] = []


def register(values: Iterable[str]) -> None:
    """Add secret values to mask from now on (longest first, so a secret containing another goes whole)."""
    known = set(_secrets)
    for value in values:
        if len(value) >= MIN_LENGTH:
            known.add(value)
    _secrets[:] = sorted(known, key=len, reverse=True)


def clear() -> None:
    """Forget every registered secret (for tests that configure several nodes in one process)."""
    _secrets.clear()


def redact(text: str) -> str:
    """``text`` with URL passwords and every registered secret masked."""
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + "@", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_url(url: str) -> str:
    """A URL with its password masked and everything else kept, for the settings log line."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hosts}"))


def scrub(value: object) -> object:
    """A log record's value with secrets masked: strings directly, containers item by item."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {key: scrub(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [scrub(item) for item in value]
    return redact(str(value))
