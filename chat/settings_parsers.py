"""How each setting's text becomes its value: a parser per kind, raising `ValueError` with
what was expected (`chat.config` names the variable)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

from .settings_types import PROVIDER_NAMES, Budget


def seconds(raw: str, *, zero_ok: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if value != value or value in (float("inf"), float("-inf")) or value < 0 or (value == 0 and not zero_ok):
        raise ValueError("expected a positive number of seconds" + (" or 0" if zero_ok else ""))
    return value


def positive_float(raw: str) -> float:
    return seconds(raw)


def non_negative_float(raw: str) -> float:
    return seconds(raw, zero_ok=True)


def positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value <= 0:
        raise ValueError("expected a positive whole number")
    return value


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return raw

    return parse


def store(raw: str) -> str:
    """`none`, the one value: storing is the default, and has no name to give."""
    if raw != "none":
        raise ValueError("expected none (store nothing: a pure relay); leave it unset to store conversations")
    return raw


def url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return raw.rstrip("/")


def redis_url(raw: str) -> str:
    """A URL redis-py's `from_url` takes: TCP, TLS, or a Unix socket."""
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix") or not rest.strip("/"):
        raise ValueError("expected a redis://, rediss:// or unix:// URL, as in redis://127.0.0.1:6379/0")
    return raw


def redis_prefix(raw: str) -> str:
    if not raw.isprintable() or any(c.isspace() for c in raw):
        raise ValueError("expected a key prefix without spaces or control characters, as in sidechat:")
    return raw


def text(raw: str) -> str:
    return raw


def names(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    if not names:
        raise ValueError("expected host names separated by commas, or *")
    return names


def tokens(raw: str) -> tuple[tuple[str, str], ...]:
    """`token1=alice,token2=bob` -> (("token1", "alice"), ("token2", "bob"))."""
    return parse_tokens(raw.split(","))


def parse_tokens(entries: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """`token=user` entries (blank ones skipped), as `SIDECHAT_API_TOKENS` and its file hold them."""
    pairs = []
    for entry in entries:
        token, sep, user = (part.strip() for part in entry.strip().partition("="))
        if not (token or user):
            continue
        if not sep or not token or not user:
            raise ValueError("expected token=user entries")
        if any(c.isspace() for c in token) or not token.isprintable():
            raise ValueError("a token cannot contain spaces or control characters")
        if len(token) < 16:
            raise ValueError("a token must be at least 16 characters; `openssl rand -hex 32` makes one")
        pairs.append((token, user))
    return tuple(pairs)


def networks(raw: str) -> tuple[str, ...]:
    found = names(raw)
    for name in found:
        try:
            ipaddress.ip_network(name, strict=False)
        except ValueError:
            raise ValueError(f"{name!r} is not an IP address or network") from None
    return found


def header(raw: str) -> str:
    if not raw.replace("-", "").replace("_", "").isalnum():
        raise ValueError("expected a header name")
    return raw.lower()


PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def rate(raw: str) -> tuple[int, float]:
    """`30/minute` -> (30, 60.0)."""
    count, _, period = raw.partition("/")
    if not count.strip().isdigit() or int(count) <= 0 or period.strip() not in PERIODS:
        raise ValueError(f"expected a number per {', '.join(PERIODS)}, as in 30/minute")
    return int(count), PERIODS[period.strip()]


def port(raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError("expected a port number from 1 to 65535")
    return int(raw)


def fallback(raw: str) -> tuple[tuple[str, str], ...]:
    """`anthropic:claude-sonnet-4-5,openai` -> (("anthropic", "claude-sonnet-4-5"), ("openai", "")).

    Only the first colon splits: model names have their own (`llama3.2:3b`, `ft:gpt-4o:…`).
    """
    chain = []
    for item in raw.split(","):
        provider, _, model = item.strip().partition(":")
        provider, model = provider.strip(), model.strip()
        if not provider:
            raise ValueError("expected provider:model entries separated by commas, found an empty one")
        if provider not in PROVIDER_NAMES:
            raise ValueError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDER_NAMES)}")
        chain.append((provider, model))
    return tuple(chain)


def flag(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1 or 0")


_BUDGET = re.compile(r"(\d+(?:\.\d+)?)\s*(usd|tokens)\s*/\s*(day|month)")


def budget(raw: str) -> tuple[Budget, ...]:
    """`5usd/day,100usd/month,2000000tokens/day` -> one `Budget` each."""
    budgets = []
    for item in raw.split(","):
        found = _BUDGET.fullmatch(item.strip().lower())
        if found is None or float(found[1]) <= 0:
            raise ValueError("expected entries like 5usd/day, 100usd/month or 200000tokens/day")
        budgets.append(Budget(float(found[1]), found[2], found[3]))
    if len({(b.unit, b.period) for b in budgets}) < len(budgets):
        raise ValueError("each unit and period may be given once")
    return tuple(budgets)
