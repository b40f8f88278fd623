"""Settings, read once from an environment mapping.

This is the only module that looks at `os.environ` (and only in `from_env`'s
default argument), so tests build `Settings` from plain dicts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from . import settings_parsers as parse
from .settings_parsers import parse_tokens
from .settings_types import LOG_FORMATS, ON_DISCONNECT, PROVIDER_NAMES, Budget

__all__ = ["Budget", "ConfigError", "PROVIDER_NAMES", "ON_DISCONNECT", "Settings", "parse_tokens"]


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


def _secret(default: Any = None) -> Any:
    return field(default=default, repr=False)


@dataclass(frozen=True)
class Settings:
    db: str = "./sidechat.db"
    store: str = "stored"  # "none": nothing is stored, a pure relay (chat.store_none)
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
    log_format: str = "text"
    log_content: bool = False  # message text in the logs: off, unless asked for
    metrics_token: str | None = _secret()  # bearer token for /metrics; open (on loopback) when unset
    prices: str | None = None  # a TOML price table laid over the built-in one
    user_budget: tuple[Budget, ...] = ()  # per user, e.g. 5usd/day,100usd/month
    redis_url: str | None = _secret()  # redis://…: live state shared by several processes
    redis_prefix: str = "sidechat:"  # every Redis key's, so one Redis serves several deployments
    lease_seconds: float = 10.0  # with Redis: a dead process's replies are ended within this long

    @property
    def stored(self) -> bool:
        """Whether conversations are kept (in the database at `db`); not with SIDECHAT_STORE=none."""
        return self.store != "none"

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
        for name, (var, parser) in _VARIABLES.items():
            raw = env.get(var, "").strip()
            if raw:
                try:
                    values[name] = parser(raw)
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


_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "db": ("SIDECHAT_DB", parse.text),
    "store": ("SIDECHAT_STORE", parse.store),
    "host": ("SIDECHAT_HOST", parse.text),
    "port": ("SIDECHAT_PORT", parse.port),
    "provider": ("SIDECHAT_PROVIDER", parse.choice(*PROVIDER_NAMES)),
    "model": ("SIDECHAT_MODEL", parse.text),
    "openai_api_key": ("OPENAI_API_KEY", parse.text),
    "openai_base_url": ("OPENAI_BASE_URL", parse.url),
    "anthropic_api_key": ("ANTHROPIC_API_KEY", parse.text),
    "anthropic_base_url": ("ANTHROPIC_BASE_URL", parse.url),
    "gemini_api_key": ("GEMINI_API_KEY", parse.text),
    "gemini_base_url": ("GEMINI_BASE_URL", parse.url),
    "ollama_base_url": ("OLLAMA_BASE_URL", parse.url),
    "demo_delay": ("SIDECHAT_DEMO_DELAY", parse.non_negative_float),
    "ca_bundle": ("SIDECHAT_CA_BUNDLE", parse.text),
    "heartbeat_seconds": ("SIDECHAT_HEARTBEAT_SECONDS", parse.positive_float),
    "connect_timeout": ("SIDECHAT_UPSTREAM_CONNECT_TIMEOUT", parse.positive_float),
    "first_token_timeout": ("SIDECHAT_UPSTREAM_FIRST_TOKEN_TIMEOUT", parse.positive_float),
    "idle_timeout": ("SIDECHAT_UPSTREAM_IDLE_TIMEOUT", parse.positive_float),
    "shutdown_grace_seconds": ("SIDECHAT_SHUTDOWN_GRACE_SECONDS", parse.non_negative_float),
    "on_disconnect": ("SIDECHAT_ON_DISCONNECT", parse.choice(*ON_DISCONNECT)),
    "history_messages": ("SIDECHAT_HISTORY_MESSAGES", parse.positive_int),
    "max_body_bytes": ("SIDECHAT_MAX_BODY_BYTES", parse.positive_int),
    "body_timeout": ("SIDECHAT_BODY_TIMEOUT", parse.positive_float),
    "max_message_chars": ("SIDECHAT_MAX_MESSAGE_CHARS", parse.positive_int),
    "replay_seconds": ("SIDECHAT_REPLAY_SECONDS", parse.non_negative_float),
    "checkpoint_seconds": ("SIDECHAT_CHECKPOINT_SECONDS", parse.non_negative_float),
    "checkpoint_bytes": ("SIDECHAT_CHECKPOINT_BYTES", parse.positive_int),
    "max_pending_writes": ("SIDECHAT_MAX_PENDING_WRITES", parse.positive_int),
    "db_busy_timeout": ("SIDECHAT_DB_BUSY_TIMEOUT", parse.non_negative_float),
    "max_upstream_event_bytes": ("SIDECHAT_MAX_UPSTREAM_EVENT_BYTES", parse.positive_int),
    "max_reply_chars": ("SIDECHAT_MAX_REPLY_CHARS", parse.positive_int),
    "allowed_hosts": ("SIDECHAT_ALLOWED_HOSTS", parse.names),
    "api_tokens": ("SIDECHAT_API_TOKENS", parse.tokens),
    "api_tokens_file": ("SIDECHAT_API_TOKENS_FILE", parse.text),
    "trusted_user_header": ("SIDECHAT_TRUSTED_USER_HEADER", parse.header),
    "trusted_proxies": ("SIDECHAT_TRUSTED_PROXIES", parse.networks),
    "cors_origins": ("SIDECHAT_CORS_ORIGINS", parse.names),
    "rate_limit": ("SIDECHAT_RATE_LIMIT", parse.rate),
    "max_streams_per_user": ("SIDECHAT_MAX_STREAMS_PER_USER", parse.positive_int),
    "max_connections_per_user": ("SIDECHAT_MAX_CONNECTIONS_PER_USER", parse.positive_int),
    "max_connections": ("SIDECHAT_MAX_CONNECTIONS", parse.positive_int),
    "client_stall_seconds": ("SIDECHAT_CLIENT_STALL_SECONDS", parse.positive_float),
    "feed_replay_events": ("SIDECHAT_FEED_REPLAY_EVENTS", parse.positive_int),
    "feed_replay_seconds": ("SIDECHAT_FEED_REPLAY_SECONDS", parse.positive_float),
    "typing_seconds": ("SIDECHAT_TYPING_SECONDS", parse.positive_float),
    "retry_attempts": ("SIDECHAT_RETRY_ATTEMPTS", parse.positive_int),
    "retry_max_seconds": ("SIDECHAT_RETRY_MAX_SECONDS", parse.positive_float),
    "fallback": ("SIDECHAT_FALLBACK", parse.fallback),
    "log_format": ("SIDECHAT_LOG_FORMAT", parse.choice(*LOG_FORMATS)),
    "log_content": ("SIDECHAT_LOG_CONTENT", parse.flag),
    "metrics_token": ("SIDECHAT_METRICS_TOKEN", parse.text),
    "prices": ("SIDECHAT_PRICES", parse.text),
    "user_budget": ("SIDECHAT_USER_BUDGET", parse.budget),
    "redis_url": ("SIDECHAT_REDIS_URL", parse.redis_url),
    "redis_prefix": ("SIDECHAT_REDIS_PREFIX", parse.redis_prefix),
    "lease_seconds": ("SIDECHAT_LEASE_SECONDS", parse.positive_float),
}
