"""Every error Fanline raises on purpose descends from :class:`FanlineError`.

The broker side of the tree lives here; the node adds the errors it shows to
clients and operators (node/errors.py draws the whole tree)::

    FanlineError
    ├── BrokerError                 the broker could not do what was asked
    │   └── BrokerUnavailable       it cannot be reached now; safe to retry later
    ├── ConfigError                 a setting or URL outside what it accepts (also a ValueError)
    │   └── UnknownBrokerURL        a URL no adapter handles, or with wrong options
    │       └── MissingBrokerClient the URL's broker client is not installed (names the extra)
    └── InvalidInput                a value outside the documented form (also a ValueError)
        ├── InvalidChannel
        ├── InvalidEventId
        ├── InvalidEventType
        └── InvalidData
"""

from __future__ import annotations


class FanlineError(Exception):
    """The root of every error Fanline raises on purpose."""


class BrokerError(FanlineError):
    """The broker could not do what was asked."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached right now.  Safe to retry later."""


class ConfigError(FanlineError, ValueError):
    """A setting or a URL outside what it accepts: fix the configuration, do not retry."""


class UnknownBrokerURL(ConfigError):
    """A broker URL whose scheme no adapter handles, or whose options are wrong."""


class MissingBrokerClient(UnknownBrokerURL):
    """The URL's broker needs a client library that is not installed; the message names the pip extra."""


class InvalidInput(FanlineError, ValueError):
    """A value from outside (a client, a publisher) that is not of the documented form."""


class InvalidEventId(InvalidInput):
    """An event id that is not of the documented form."""


class InvalidChannel(InvalidInput):
    """A channel name outside the documented alphabet or length."""


class InvalidEventType(InvalidInput):
    """A publisher-defined event type outside the documented alphabet."""


class InvalidData(InvalidInput):
    """A payload that is not JSON."""
