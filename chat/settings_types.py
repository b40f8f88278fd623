"""The values settings take that are more than a number or a string."""

from __future__ import annotations

from dataclasses import dataclass

PROVIDER_NAMES = ("openai", "openai-responses", "anthropic", "gemini", "ollama", "demo")
ON_DISCONNECT = ("continue", "cancel")


LOG_FORMATS = ("text", "json")
BUDGET_UNITS = ("usd", "tokens")
BUDGET_PERIODS = ("day", "month")


@dataclass(frozen=True, slots=True)
class Budget:
    """At most `amount` of `unit` (usd or tokens) per user, per calendar `period` (UTC)."""

    amount: float
    unit: str
    period: str
