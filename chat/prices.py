"""What a reply costs: the price table (`prices.toml`, shipped in the package), and the
operator's own laid over it (`SIDECHAT_PRICES=path`).

Deliberate choices:
- An operator's file is merged with the built-in table, field by field: a file of one
  line can add a model, or change one of its prices, without copying the rest (and so
  without freezing every other price at the day it was copied). A new model needs its
  `input` and `output`; a known one keeps what the file does not say.
- The file is read and checked once, at start-up: a typo in it stops the server with a
  message naming SIDECHAT_PRICES and the entry, rather than pricing replies at nothing.
- A model is found by its exact name, or by that name less a dated snapshot's suffix
  (`-2024-07-18`, `-20250929`, `-001`), never by a prefix: `gpt-4o` and `gpt-4o-mini`
  are different prices, and an unknown model is `None` (its reply's `cost_usd` is null),
  not the price of a model it happens to begin like. `"*"` prices the rest of a
  provider's models (Ollama's and the demo's cost nothing).
- Another API onto the same models (`openai-responses`, OpenAI's Responses API) is priced
  as the provider that sells them (`PRICED_AS`): a model costs the same on both APIs, and
  a copy of the table would drift from it. Its own section, empty in the built-in table,
  is looked in first, so an operator can still price it apart.
- The cost is not rounded: a reply of a few tokens costs a few millionths of a dollar,
  and a sum of rounded costs would drift.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import StartupError
from .providers.base import Usage
from .resources import resource
from .settings_types import PROVIDER_NAMES

MILLION = 1_000_000
ANY_MODEL = "*"
# A dated snapshot of a model: OpenAI's -2024-07-18, Anthropic's -20250929, Gemini's -001.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{3})$")
# Another API onto a provider's models: priced, failing its own section, as that provider.
PRICED_AS = {"openai-responses": "openai"}


class PriceError(ValueError):
    """A price table we cannot use; the message says which entry and why."""


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens; cache reads and writes at the input price unless given."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None

    def cost(self, usage: Usage) -> float | None:
        """What `usage` costs, None when the provider counted nothing; a count it left out
        is taken as none."""
        if not usage.reported:
            return None
        cached = usage.cached_input_tokens or 0
        written = usage.cache_write_tokens or 0
        fresh = max((usage.input_tokens or 0) - cached - written, 0)
        total = (
            fresh * self.input
            + cached * (self.input if self.cached_input is None else self.cached_input)
            + written * (self.input if self.cache_write is None else self.cache_write)
            + (usage.output_tokens or 0) * self.output
        )
        return total / MILLION


_FIELDS = tuple(f.name for f in fields(Price))


class Prices:
    """Prices by provider and model."""

    def __init__(self, table: Mapping[str, Mapping[str, Price]]) -> None:
        self.table = {provider: dict(models) for provider, models in table.items()}

    def price_of(self, provider: str | None, model: str | None) -> Price | None:
        if not model:
            return None
        model = model.removeprefix("models/")  # Gemini's resource name, as a client may send it
        found = self._find(provider, model)
        if found is None and provider in PRICED_AS:
            found = self._find(PRICED_AS[provider], model)
        return found

    def _find(self, provider: str | None, model: str) -> Price | None:
        models = self.table.get(provider or "")
        if models is None:
            return None
        found = models.get(model)
        if found is None and (family := _SNAPSHOT.sub("", model)) != model:
            found = models.get(family)
        return found if found is not None else models.get(ANY_MODEL)

    def cost(self, provider: str | None, model: str | None, usage: Usage) -> float | None:
        """`usage` at the price of `model` of `provider`; None when either is unknown."""
        price = self.price_of(provider, model)
        return None if price is None else price.cost(usage)


def built_in() -> Prices:
    return Prices(parse(_read(resource("prices.toml")), merge_into={}))


def load_prices(path: str | None) -> Prices:
    """The built-in table with the file at `path` (SIDECHAT_PRICES) laid over it; a
    `StartupError` naming the variable when that file cannot be used."""
    prices = built_in()
    if not path:
        return prices
    try:
        return Prices(parse(_read(Path(path)), merge_into=prices.table))
    except PriceError as exc:
        raise StartupError(f"SIDECHAT_PRICES={path}: {exc}") from None


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise PriceError(f"cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PriceError(f"not valid TOML: {exc}") from None


def parse(
    document: dict[str, Any], *, merge_into: Mapping[str, Mapping[str, Price]]
) -> dict[str, dict[str, Price]]:
    """The table `document` describes, laid over `merge_into` (entries it names replace those
    fields only); a `PriceError` for anything that is not a provider, a model or a price."""
    table = {provider: dict(models) for provider, models in merge_into.items()}
    for provider, models in document.items():
        if provider not in PROVIDER_NAMES:
            raise PriceError(f"[{provider}] is not a provider (known: {', '.join(PROVIDER_NAMES)})")
        if not isinstance(models, dict):
            raise PriceError(f"{provider} must be a table of models, like [{provider}]")
        known = table.setdefault(provider, {})
        for model, entry in models.items():
            known[model] = _price(f"{provider}.{model}", entry, known.get(model))
    return table


def _price(where: str, entry: object, before: Price | None) -> Price:
    if not isinstance(entry, dict):
        raise PriceError(f"{where} must be a table like {{ input = 0.15, output = 0.60 }}")
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise PriceError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(_FIELDS)})")
    values: dict[str, float] = {}
    for name, value in entry.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise PriceError(f"{where}.{name} must be a number of USD per million tokens")
        if value < 0:
            raise PriceError(f"{where}.{name} must not be negative")
        values[name] = float(value)
    if before is not None:
        return replace(before, **values)
    missing = [name for name in ("input", "output") if name not in values]
    if missing:
        raise PriceError(f"{where}: a new model needs {' and '.join(missing)}")
    return Price(**values)
