from __future__ import annotations

from pathlib import Path

import pytest

from chat.config import _VARIABLES, ConfigError, Settings


def test_defaults_with_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings.provider == "demo"
    assert settings.db == "./sidechat.db"
    assert (settings.heartbeat_seconds, settings.on_disconnect) == (15.0, "continue")
    assert (settings.connect_timeout, settings.first_token_timeout, settings.idle_timeout) == (
        10.0,
        120.0,
        60.0,
    )
    assert (settings.retry_attempts, settings.retry_max_seconds, settings.fallback) == (3, 30.0, ())


@pytest.mark.parametrize(
    ("env", "provider"),
    [
        ({"OPENAI_API_KEY": "sk-a"}, "openai"),
        ({"ANTHROPIC_API_KEY": "sk-ant-a"}, "anthropic"),
        ({"GEMINI_API_KEY": "AIza", "ANTHROPIC_API_KEY": "sk-ant-a"}, "anthropic"),
        ({"GEMINI_API_KEY": "AIza"}, "gemini"),
        ({"OPENAI_API_KEY": "sk-a", "SIDECHAT_PROVIDER": "demo"}, "demo"),
        ({"OPENAI_API_KEY": "  "}, "demo"),
    ],
)
def test_default_provider_is_the_first_with_a_key(env: dict[str, str], provider: str) -> None:
    assert Settings.from_env(env).provider == provider


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SIDECHAT_HEARTBEAT_SECONDS", "abc"),
        ("SIDECHAT_HEARTBEAT_SECONDS", "0"),
        ("SIDECHAT_HEARTBEAT_SECONDS", "-1"),
        ("SIDECHAT_HEARTBEAT_SECONDS", "nan"),
        ("SIDECHAT_UPSTREAM_IDLE_TIMEOUT", "inf"),
        ("SIDECHAT_PROVIDER", "skynet"),
        ("SIDECHAT_ON_DISCONNECT", "explode"),
        ("OPENAI_BASE_URL", "api.openai.com"),
        ("SIDECHAT_HISTORY_MESSAGES", "1.5"),
        ("SIDECHAT_SHUTDOWN_GRACE_SECONDS", "-3"),
        ("SIDECHAT_RETRY_ATTEMPTS", "0"),
        ("SIDECHAT_RETRY_ATTEMPTS", "two"),
        ("SIDECHAT_RETRY_MAX_SECONDS", "0"),
        ("SIDECHAT_RETRY_MAX_SECONDS", "-5"),
        ("SIDECHAT_FALLBACK", "skynet:t-800"),
        ("SIDECHAT_FALLBACK", "anthropic:claude-sonnet-4-5,,openai:gpt-4o-mini"),
        ("SIDECHAT_FALLBACK", ":gpt-4o-mini"),
        ("SIDECHAT_STORE", "sqlite"),
        ("SIDECHAT_STORE", "stored"),
        ("SIDECHAT_STORE", "None"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "SIDECHAT_HEARTBEAT_SECONDS": "2.5",
            "SIDECHAT_SHUTDOWN_GRACE_SECONDS": "0",
            "OPENAI_BASE_URL": "http://127.0.0.1:8080/v1/",
            "SIDECHAT_ON_DISCONNECT": "cancel",
        }
    )
    assert settings.heartbeat_seconds == 2.5
    assert settings.shutdown_grace_seconds == 0
    assert settings.openai_base_url == "http://127.0.0.1:8080/v1"
    assert settings.on_disconnect == "cancel"


def test_repr_masks_keys() -> None:
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-very-secret", "ANTHROPIC_API_KEY": "sk-ant-secret"})
    shown = repr(settings)
    assert "secret" not in shown
    assert "openai_api_key='***'" in shown and "gemini_api_key=None" in shown


def test_cli_values_override_and_none_keeps() -> None:
    settings = Settings.from_env({"SIDECHAT_DB": "/tmp/a.db"}).override(db=None, port=9000)
    assert (settings.db, settings.port) == ("/tmp/a.db", 9000)


def test_retry_settings_are_parsed() -> None:
    settings = Settings.from_env({"SIDECHAT_RETRY_ATTEMPTS": "5", "SIDECHAT_RETRY_MAX_SECONDS": "2.5"})
    assert (settings.retry_attempts, settings.retry_max_seconds) == (5, 2.5)


@pytest.mark.parametrize(
    ("value", "chain"),
    [
        ("anthropic:claude-sonnet-4-5", (("anthropic", "claude-sonnet-4-5"),)),
        (
            "anthropic:claude-sonnet-4-5, openai:gpt-4o-mini",
            (("anthropic", "claude-sonnet-4-5"), ("openai", "gpt-4o-mini")),
        ),
        ("gemini", (("gemini", ""),)),  # its default model
        ("ollama:llama3.2:3b", (("ollama", "llama3.2:3b"),)),  # model names hold colons
        ("openai:ft:gpt-4o-mini:acme::abc123", (("openai", "ft:gpt-4o-mini:acme::abc123"),)),
        ("  ", ()),
    ],
)
def test_fallback_chain_is_parsed(value: str, chain: tuple[tuple[str, str], ...]) -> None:
    assert Settings.from_env({"SIDECHAT_FALLBACK": value}).fallback == chain


def test_unknown_fallback_provider_is_named() -> None:
    with pytest.raises(ConfigError, match=r"SIDECHAT_FALLBACK=.*unknown provider 'azure'"):
        Settings.from_env({"SIDECHAT_FALLBACK": "openai:gpt-4o,azure:gpt-4o"})


def test_the_readme_documents_every_variable_read() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## Providers")]
    missing = [var for var, _ in _VARIABLES.values() if f"`{var}`" not in table]
    assert missing == []


def test_host_and_port_come_from_the_environment() -> None:
    settings = Settings.from_env({"SIDECHAT_HOST": "0.0.0.0", "SIDECHAT_PORT": "9001"})
    assert (settings.host, settings.port) == ("0.0.0.0", 9001)


def test_durability_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.checkpoint_seconds, settings.checkpoint_bytes) == (2.0, 2048)
    assert (settings.max_pending_writes, settings.db_busy_timeout) == (1000, 10.0)


def test_storing_is_on_unless_turned_off() -> None:
    stored = Settings.from_env({})
    assert (stored.store, stored.stored) == ("stored", True)
    relay = Settings.from_env({"SIDECHAT_STORE": "none"})
    assert (relay.store, relay.stored) == ("none", False)
    assert Settings.from_env({"SIDECHAT_STORE": "  "}).stored  # blank is unset


def test_a_store_other_than_none_says_what_to_write() -> None:
    with pytest.raises(ConfigError, match=r"SIDECHAT_STORE='off': expected none .*leave it unset"):
        Settings.from_env({"SIDECHAT_STORE": "off"})
