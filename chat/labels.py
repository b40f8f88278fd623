"""Label values from bounded sets: what a metric's label, or a span's name, may say.

Prometheus keeps a time series for every distinct set of label values, and a
tracing backend groups by span name, so a value a caller chooses (a model name,
a path with an id in it, an HTTP method, an error's text) must never become one.
Each value below comes from a set this process knows before any request: the
route templates, the configured providers and their known models, the outcomes
of a reply, the error types of `chat.providers`; anything else is `other` (a
request that matched no route is `unmatched`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute
from starlette.types import Scope

from .logs import route_template
from .prices import ANY_MODEL
from .providers.base import ERROR_TYPES
from .settings_types import PROVIDER_NAMES

if TYPE_CHECKING:
    from .config import Settings
    from .prices import Prices
    from .providers import ProviderInfo

OTHER = "other"
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# How a reply ended: its row's status (`chat.outcome`).
STORAGE_FAILED = "storage_failed"  # a reply whose end the database never took
OUTCOMES = frozenset({"completed", "failed", "cancelled", "interrupted", STORAGE_FAILED})


def known_models(
    settings: Settings, providers: Mapping[str, ProviderInfo] | None = None, prices: Prices | None = None
) -> frozenset[str]:
    """The model names a label may carry as they are: each provider's default model,
    `SIDECHAT_MODEL`, the models `SIDECHAT_FALLBACK` names, and those the price table prices
    (a fixed list, read at start-up)."""
    names = {info.default_model for info in (providers or {}).values()}
    if prices is not None:
        names.update(model for models in prices.table.values() for model in models if model != ANY_MODEL)
    if settings.model:
        names.add(settings.model)
    names.update(model for _, model in settings.fallback if model)
    return frozenset(names)


class Labels:
    """This process's bounded sets, and each value mapped into them."""

    def __init__(self, settings: Settings, routes: list[BaseRoute] | None = None) -> None:
        self.settings = settings
        self.routes = routes
        self.providers = frozenset(PROVIDER_NAMES)
        self.models = known_models(settings)

    def know(self, providers: Mapping[str, ProviderInfo], prices: Prices | None = None) -> None:
        """The providers the app built (at start-up), and its price table: their names and
        models count."""
        self.providers = frozenset(PROVIDER_NAMES) | providers.keys()
        self.models = known_models(self.settings, providers, prices)

    def route(self, scope: Scope) -> str:
        return route_template(scope, self.routes) or UNMATCHED

    def method(self, scope: Scope) -> str:
        method = scope.get("method")
        return method if method in METHODS else OTHER

    def provider(self, name: object) -> str:
        return name if isinstance(name, str) and name in self.providers else OTHER

    def model(self, name: object) -> str:
        return name if isinstance(name, str) and name in self.models else OTHER

    @staticmethod
    def outcome(status: str | None) -> str:
        """A reply's end; one whose task was torn down before it could conclude (the loop
        stopping under it) is left `streaming`, which the next start marks interrupted."""
        if status is None:
            return "interrupted"
        return status if status in OUTCOMES else OTHER

    @staticmethod
    def error_type(name: object) -> str:
        return name if isinstance(name, str) and name in ERROR_TYPES else OTHER


_WRITE = re.compile(
    r"\s*(INSERT|UPDATE|DELETE|REPLACE)\s+(?:OR\s+\w+\s+)?(?:INTO\s+|FROM\s+)?\"?(\w+)", re.IGNORECASE
)


@lru_cache(maxsize=256)  # the statements are the store's constants: a handful, asked again and again
def write_of(sql: str) -> tuple[str, str]:
    """A write's operation and table (`("insert", "messages")`), never its parameters; the
    store's statements are written in code, so both come from a set of a few."""
    found = _WRITE.match(sql)
    if found is None:
        return OTHER, OTHER
    return found.group(1).lower(), found.group(2).lower()
