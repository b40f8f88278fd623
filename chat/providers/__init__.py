"""The providers this process can talk to, built once from the settings.

Each usable adapter is wrapped to retry before its first token (`retry.py`), and,
when `SIDECHAT_FALLBACK` names a chain, to hand over to the next usable provider
in it (`fallback.py`). So `ProviderInfo.provider` is all a caller needs: asking
it for a stream already retries and falls back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

from ..config import Settings
from ..telemetry import NOTHING, Telemetry
from .anthropic import AnthropicProvider
from .base import Provider
from .deadlines import Timeouts
from .demo import DemoProvider
from .fallback import with_fallback
from .gemini import GeminiProvider
from .ollama import OllamaProvider
from .openai import OpenAIProvider
from .openai_responses import OpenAIResponsesProvider
from .retry import RetryingProvider

log = logging.getLogger("sidechat.providers")


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    name: str
    default_model: str
    key_variable: str | None  # the variable that configures it, if it needs one
    key_set: bool
    provider: Provider | None  # None when it cannot be used until configured

    @property
    def available(self) -> bool:
        return self.provider is not None

    def as_json(self, default: str) -> dict[str, object]:
        return {
            "name": self.name,
            "default_model": self.default_model,
            "key_set": self.key_set,
            "available": self.available,
            "default": self.name == default,
        }


@dataclass(frozen=True, slots=True)
class Adapter:
    """An adapter as configured, before it is wrapped for retries and fallback."""

    provider: Provider
    key_variable: str | None = None
    key_set: bool = False
    usable: bool = True


def build_providers(
    settings: Settings, client: httpx.AsyncClient, timeouts: Timeouts, telemetry: Telemetry = NOTHING
) -> dict[str, ProviderInfo]:
    def model(name: str) -> str | None:
        return settings.model if settings.provider == name else None

    # Each keyed adapter: its key, the variable that sets it, its base URL. Both of OpenAI's
    # APIs take its key and base URL.
    keyed = (
        (OpenAIProvider, settings.openai_api_key, "OPENAI_API_KEY", settings.openai_base_url),
        (OpenAIResponsesProvider, settings.openai_api_key, "OPENAI_API_KEY", settings.openai_base_url),
        (AnthropicProvider, settings.anthropic_api_key, "ANTHROPIC_API_KEY", settings.anthropic_base_url),
        (GeminiProvider, settings.gemini_api_key, "GEMINI_API_KEY", settings.gemini_base_url),
    )
    # An OpenAI-compatible local server (llama.cpp, vLLM, LM Studio, Ollama's /v1) needs no key.
    local_openai = settings.openai_base_url != OpenAIProvider.default_base_url
    adapters = [
        Adapter(
            cls(
                client,
                api_key=key,
                base_url=base_url,
                default_model=model(cls.name),
                timeouts=timeouts,
                max_event_bytes=settings.max_upstream_event_bytes,
            ),
            key_variable=variable,
            key_set=bool(key),
            usable=bool(key) or (variable == "OPENAI_API_KEY" and local_openai),
        )
        for cls, key, variable, base_url in keyed
    ]
    adapters.append(
        Adapter(
            OllamaProvider(
                client,
                base_url=settings.ollama_base_url,
                default_model=model("ollama"),
                timeouts=timeouts,
                max_event_bytes=settings.max_upstream_event_bytes,
            )
        )
    )
    adapters.append(Adapter(DemoProvider(delay=settings.demo_delay, default_model=model("demo"))))

    retrying: dict[str, Provider] = {
        a.provider.name: RetryingProvider(
            a.provider,
            attempts=settings.retry_attempts,
            max_seconds=settings.retry_max_seconds,
            telemetry=telemetry,
        )
        for a in adapters
        if a.usable
    }
    chain: list[tuple[Provider, str]] = []
    for name, fallback_model in settings.fallback:
        if name in retrying:
            chain.append((retrying[name], fallback_model))
        else:
            log.warning("SIDECHAT_FALLBACK names %s, which is not configured: skipped", name)
    return {
        a.provider.name: ProviderInfo(
            name=a.provider.name,
            default_model=a.provider.default_model,
            key_variable=a.key_variable,
            key_set=a.key_set,
            provider=with_fallback(retrying[a.provider.name], chain, telemetry) if a.usable else None,
        )
        for a in adapters
    }
