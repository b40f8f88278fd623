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
from .anthropic import AnthropicProvider
from .base import Provider, Timeouts
from .demo import DemoProvider
from .fallback import with_fallback
from .gemini import GeminiProvider
from .ollama import OllamaProvider
from .openai import OpenAIProvider
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


def build_providers(settings: Settings, client: httpx.AsyncClient) -> dict[str, ProviderInfo]:
    timeouts = Timeouts(
        connect=settings.connect_timeout,
        first_token=settings.first_token_timeout,
        idle=settings.idle_timeout,
    )

    def model(name: str) -> str | None:
        return settings.model if settings.provider == name else None

    # An OpenAI-compatible local server (llama.cpp, vLLM, LM Studio, Ollama's /v1) needs no key.
    openai_usable = bool(settings.openai_api_key) or settings.openai_base_url != Settings.openai_base_url
    candidates: list[tuple[Provider, str | None, bool, bool]] = [
        (
            OpenAIProvider(
                client,
                api_key=settings.openai_api_key,
                base_url=settings.openai_base_url,
                default_model=model("openai"),
                timeouts=timeouts,
            ),
            "OPENAI_API_KEY",
            bool(settings.openai_api_key),
            openai_usable,
        ),
        (
            AnthropicProvider(
                client,
                api_key=settings.anthropic_api_key,
                base_url=settings.anthropic_base_url,
                default_model=model("anthropic"),
                timeouts=timeouts,
            ),
            "ANTHROPIC_API_KEY",
            bool(settings.anthropic_api_key),
            bool(settings.anthropic_api_key),
        ),
        (
            GeminiProvider(
                client,
                api_key=settings.gemini_api_key,
                base_url=settings.gemini_base_url,
                default_model=model("gemini"),
                timeouts=timeouts,
            ),
            "GEMINI_API_KEY",
            bool(settings.gemini_api_key),
            bool(settings.gemini_api_key),
        ),
        (
            OllamaProvider(
                client,
                base_url=settings.ollama_base_url,
                default_model=model("ollama"),
                timeouts=timeouts,
            ),
            None,
            False,
            True,
        ),
        (DemoProvider(delay=settings.demo_delay, default_model=model("demo")), None, False, True),
    ]
    retrying: dict[str, Provider] = {
        provider.name: RetryingProvider(
            provider, attempts=settings.retry_attempts, max_seconds=settings.retry_max_seconds
        )
        for provider, _, _, usable in candidates
        if usable
    }
    chain: list[tuple[Provider, str]] = []
    for name, fallback_model in settings.fallback:
        if name in retrying:
            chain.append((retrying[name], fallback_model))
        else:
            log.warning("SIDECHAT_FALLBACK names %s, which is not configured: skipped", name)
    return {
        provider.name: ProviderInfo(
            name=provider.name,
            default_model=provider.default_model,
            key_variable=variable,
            key_set=key_set,
            provider=with_fallback(retrying[provider.name], chain) if usable else None,
        )
        for provider, variable, key_set, usable in candidates
    }
