"""Settings, read once from an environment mapping.

This is the only module that looks at `os.environ` (and only in `from_env`'s
default argument), so tests build `Settings` from plain dicts.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

PROVIDER_NAMES = ("openai", "anthropic", "gemini", "ollama", "demo")
ON_DISCONNECT = ("continue", "cancel")


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


def _secret(default: Any = None) -> Any:
    return field(default=default, repr=False)


@dataclass(frozen=True)
class Settings:
    db: str = "./sidechat.db"
    host: str = "127.0.0.1"
    port: int = 8000

    provider: str = "demo"
    model: str | None = None
    openai_api_key: str | None = _secret()
    openai_base_url: str = "https://api.openai.com/v1"
    anthropic_api_key: str | None = _secret()
    anthropic_base_url: str = "https://api.anthropic.com"
    gemini_api_key: str | None = _secret()
    gemini_base_url: str = "https://generativelanguage.googleapis.com"
    ollama_base_url: str = "http://127.0.0.1:11434"
    demo_delay: float = 0.03
    ca_bundle: str | None = None  # CA certificates (a PEM file or a directory) to trust upstream

    heartbeat_seconds: float = 15.0
    connect_timeout: float = 10.0
    first_token_timeout: float = 120.0
    idle_timeout: float = 60.0
    shutdown_grace_seconds: float = 10.0
    on_disconnect: str = "continue"
    history_messages: int = 40
    max_body_bytes: int = 256 * 1024
    body_timeout: float = 10.0  # seconds for a request body to arrive
    max_message_chars: int = 100_000
    replay_seconds: float = 30.0
    checkpoint_seconds: float = 2.0  # 0: off
    checkpoint_bytes: int = 2048
    max_pending_writes: int = 1000  # replies waiting in memory for their final write
    db_busy_timeout: float = 10.0
    max_upstream_event_bytes: int = 16 * 1024 * 1024  # one upstream line or event
    max_reply_chars: int = 2_000_000
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides the local ones; "*": any
    api_tokens: tuple[tuple[str, str], ...] = _secret(())  # (token, user)
    api_tokens_file: str | None = None  # lines of token=user; re-read when it changes
    trusted_user_header: str | None = None  # e.g. x-user, set by the app or proxy in front
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")  # who may set that header
    cors_origins: tuple[str, ...] = ()
    rate_limit: tuple[int, float] = (30, 60.0)  # chat requests per user, per so many seconds
    max_streams_per_user: int = 4  # generations running at once
    max_connections_per_user: int = 256  # open event streams
    max_connections: int = 10_000
    client_stall_seconds: float = 30.0  # a client that takes in nothing for this long is let go
    feed_replay_events: int = 1000  # a live feed's window: this many events at most
    feed_replay_seconds: float = 300.0  # and none older than this
    typing_seconds: float = 5.0  # a `typing: true` ends by itself after this long
    retry_attempts: int = 3  # attempts in all, the first included
    retry_max_seconds: float = 30.0
    fallback: tuple[tuple[str, str], ...] = ()  # (provider, model); "" is its default model

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if not f.repr:
                value = "***" if value else None
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, (var, parse) in _VARIABLES.items():
            raw = env.get(var, "").strip()
            if raw:
                try:
                    values[name] = parse(raw)
                except ValueError as exc:
                    raise ConfigError(f"{var}={raw!r}: {exc}") from None
        if "provider" not in values:
            values["provider"] = next(
                (p for p in ("openai", "anthropic", "gemini") if values.get(f"{p}_api_key")),
                "demo",
            )
        return cls(**values)

    def override(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _seconds(raw: str, *, zero_ok: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if value != value or value in (float("inf"), float("-inf")) or value < 0 or (value == 0 and not zero_ok):
        raise ValueError("expected a positive number of seconds" + (" or 0" if zero_ok else ""))
    return value


def _positive_float(raw: str) -> float:
    return _seconds(raw)


def _non_negative_float(raw: str) -> float:
    return _seconds(raw, zero_ok=True)


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value <= 0:
        raise ValueError("expected a positive whole number")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return raw

    return parse


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return raw.rstrip("/")


def _text(raw: str) -> str:
    return raw


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    if not names:
        raise ValueError("expected host names separated by commas, or *")
    return names


def _tokens(raw: str) -> tuple[tuple[str, str], ...]:
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


def _networks(raw: str) -> tuple[str, ...]:
    names = _names(raw)
    for name in names:
        try:
            ipaddress.ip_network(name, strict=False)
        except ValueError:
            raise ValueError(f"{name!r} is not an IP address or network") from None
    return names


def _header(raw: str) -> str:
    if not raw.replace("-", "").replace("_", "").isalnum():
        raise ValueError("expected a header name")
    return raw.lower()


PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def _rate(raw: str) -> tuple[int, float]:
    """`30/minute` -> (30, 60.0)."""
    count, _, period = raw.partition("/")
    if not count.strip().isdigit() or int(count) <= 0 or period.strip() not in PERIODS:
        raise ValueError(f"expected a number per {', '.join(PERIODS)}, as in 30/minute")
    return int(count), PERIODS[period.strip()]


def _port(raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError("expected a port number from 1 to 65535")
    return int(raw)


def _fallback(raw: str) -> tuple[tuple[str, str], ...]:
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


_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "db": ("SIDECHAT_DB", _text),
    "host": ("SIDECHAT_HOST", _text),
    "port": ("SIDECHAT_PORT", _port),
    "provider": ("SIDECHAT_PROVIDER", _choice(*PROVIDER_NAMES)),
    "model": ("SIDECHAT_MODEL", _text),
    "openai_api_key": ("OPENAI_API_KEY", _text),
    "openai_base_url": ("OPENAI_BASE_URL", _url),
    "anthropic_api_key": ("ANTHROPIC_API_KEY", _text),
    "anthropic_base_url": ("ANTHROPIC_BASE_URL", _url),
    "gemini_api_key": ("GEMINI_API_KEY", _text),
    "gemini_base_url": ("GEMINI_BASE_URL", _url),
    "ollama_base_url": ("OLLAMA_BASE_URL", _url),
    "demo_delay": ("SIDECHAT_DEMO_DELAY", _non_negative_float),
    "ca_bundle": ("SIDECHAT_CA_BUNDLE", _text),
    "heartbeat_seconds": ("SIDECHAT_HEARTBEAT_SECONDS", _positive_float),
    "connect_timeout": ("SIDECHAT_UPSTREAM_CONNECT_TIMEOUT", _positive_float),
    "first_token_timeout": ("SIDECHAT_UPSTREAM_FIRST_TOKEN_TIMEOUT", _positive_float),
    "idle_timeout": ("SIDECHAT_UPSTREAM_IDLE_TIMEOUT", _positive_float),
    "shutdown_grace_seconds": ("SIDECHAT_SHUTDOWN_GRACE_SECONDS", _non_negative_float),
    "on_disconnect": ("SIDECHAT_ON_DISCONNECT", _choice(*ON_DISCONNECT)),
    "history_messages": ("SIDECHAT_HISTORY_MESSAGES", _positive_int),
    "max_body_bytes": ("SIDECHAT_MAX_BODY_BYTES", _positive_int),
    "body_timeout": ("SIDECHAT_BODY_TIMEOUT", _positive_float),
    "max_message_chars": ("SIDECHAT_MAX_MESSAGE_CHARS", _positive_int),
    "replay_seconds": ("SIDECHAT_REPLAY_SECONDS", _non_negative_float),
    "checkpoint_seconds": ("SIDECHAT_CHECKPOINT_SECONDS", _non_negative_float),
    "checkpoint_bytes": ("SIDECHAT_CHECKPOINT_BYTES", _positive_int),
    "max_pending_writes": ("SIDECHAT_MAX_PENDING_WRITES", _positive_int),
    "db_busy_timeout": ("SIDECHAT_DB_BUSY_TIMEOUT", _non_negative_float),
    "max_upstream_event_bytes": ("SIDECHAT_MAX_UPSTREAM_EVENT_BYTES", _positive_int),
    "max_reply_chars": ("SIDECHAT_MAX_REPLY_CHARS", _positive_int),
    "allowed_hosts": ("SIDECHAT_ALLOWED_HOSTS", _names),
    "api_tokens": ("SIDECHAT_API_TOKENS", _tokens),
    "api_tokens_file": ("SIDECHAT_API_TOKENS_FILE", _text),
    "trusted_user_header": ("SIDECHAT_TRUSTED_USER_HEADER", _header),
    "trusted_proxies": ("SIDECHAT_TRUSTED_PROXIES", _networks),
    "cors_origins": ("SIDECHAT_CORS_ORIGINS", _names),
    "rate_limit": ("SIDECHAT_RATE_LIMIT", _rate),
    "max_streams_per_user": ("SIDECHAT_MAX_STREAMS_PER_USER", _positive_int),
    "max_connections_per_user": ("SIDECHAT_MAX_CONNECTIONS_PER_USER", _positive_int),
    "max_connections": ("SIDECHAT_MAX_CONNECTIONS", _positive_int),
    "client_stall_seconds": ("SIDECHAT_CLIENT_STALL_SECONDS", _positive_float),
    "feed_replay_events": ("SIDECHAT_FEED_REPLAY_EVENTS", _positive_int),
    "feed_replay_seconds": ("SIDECHAT_FEED_REPLAY_SECONDS", _positive_float),
    "typing_seconds": ("SIDECHAT_TYPING_SECONDS", _positive_float),
    "retry_attempts": ("SIDECHAT_RETRY_ATTEMPTS", _positive_int),
    "retry_max_seconds": ("SIDECHAT_RETRY_MAX_SECONDS", _positive_float),
    "fallback": ("SIDECHAT_FALLBACK", _fallback),
}
