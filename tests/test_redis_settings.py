"""SIDECHAT_REDIS_URL and SIDECHAT_REDIS_PREFIX: which URLs are taken, and the URL kept out of logs."""

from __future__ import annotations

import pytest

from chat.config import ConfigError, Settings


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://:secret@cache.internal:6380", "unix:///run/redis/redis.sock"],
)
def test_a_redis_tls_or_unix_socket_url_is_taken_as_given(url: str) -> None:
    assert Settings.from_env({"SIDECHAT_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("url", ["127.0.0.1:6379", "http://127.0.0.1:6379", "redis://", "postgresql://x/y"])
def test_anything_else_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(
        ConfigError, match=r"SIDECHAT_REDIS_URL=.*expected a redis://, rediss:// or unix:// URL"
    ):
        Settings.from_env({"SIDECHAT_REDIS_URL": url})


def test_without_a_url_there_is_one_process_and_the_prefix_is_sidechat() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url is None and settings.redis_prefix == "sidechat:"


def test_the_url_and_its_password_stay_out_of_the_settings_repr() -> None:
    settings = Settings.from_env({"SIDECHAT_REDIS_URL": "redis://:hunter2@cache:6379"})
    assert "hunter2" not in repr(settings) and "redis_url='***'" in repr(settings)


def test_a_prefix_is_taken_and_one_with_spaces_refused() -> None:
    assert Settings.from_env({"SIDECHAT_REDIS_PREFIX": "staging:chat:"}).redis_prefix == "staging:chat:"
    with pytest.raises(ConfigError, match="SIDECHAT_REDIS_PREFIX=.*without spaces"):
        Settings.from_env({"SIDECHAT_REDIS_PREFIX": "my app:"})


def test_the_lease_bounds_how_long_a_dead_processes_replies_stay_open() -> None:
    assert Settings().lease_seconds == 10.0
    assert Settings.from_env({"SIDECHAT_LEASE_SECONDS": "2.5"}).lease_seconds == 2.5
    for wrong in ("0", "-1", "soon", "nan"):
        with pytest.raises(ConfigError, match="SIDECHAT_LEASE_SECONDS=.*positive number of seconds|number"):
            Settings.from_env({"SIDECHAT_LEASE_SECONDS": wrong})
