"""What a shared broker (`chat.redis_broker`) raises, importable without the `redis` package, so
the app can answer them and a response can end on them whether or not Redis is in use.

    BrokerError             the shared broker could not do what was asked
    ├── BrokerUnavailable   Redis could not be reached, or stopped answering
    └── EventsLost          a follower's next events are no longer kept (trimmed or expired)
"""

from __future__ import annotations


class BrokerError(Exception):
    """The shared broker could not do what was asked."""


class BrokerUnavailable(BrokerError):
    """Redis could not be reached, or stopped answering."""


class EventsLost(BrokerError):
    """A follower's next events are no longer kept: its stream was trimmed or expired."""
