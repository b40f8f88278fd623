"""Who a request acts as: tokens, the token file and its reloads, the trusted header."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from chat.auth import LOCAL_USER, Gate, TokenFile, unauthorized_body
from chat.config import ConfigError, Settings
from chat.errors import StartupError

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210ab"


def scope(*headers: tuple[str, str], client: tuple[str, int] | None = ("127.0.0.1", 5000)) -> dict[str, Any]:
    return {
        "type": "http",
        "path": "/api/conversations",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": client,
    }


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def test_no_auth_configured_is_the_one_local_user() -> None:
    gate = Gate(Settings())
    assert not gate.on
    assert gate.user(scope()) == LOCAL_USER
    assert gate.user(scope(bearer("anything at all"))) == LOCAL_USER


def test_each_token_is_its_user_and_others_are_refused() -> None:
    gate = Gate(Settings(api_tokens=((ALICE, "alice"), (BOB, "bob"))))
    assert gate.user(scope(bearer(ALICE))) == "alice"
    assert gate.user(scope(bearer(BOB))) == "bob"
    assert gate.user(scope(("Authorization", f"bearer  {ALICE} "))) == "alice"  # scheme is case-blind
    for refused in (scope(), scope(bearer(ALICE[:-1])), scope(bearer(ALICE + "x")), scope(bearer(""))):
        assert gate.user(refused) is None
    assert gate.user(scope(("Authorization", f"Basic {ALICE}"))) is None


def test_guards_api_and_v1_only() -> None:
    gate = Gate(Settings(api_tokens=((ALICE, "alice"),)))
    assert gate.guards("/api/chat") and gate.guards("/v1/chat/completions")
    assert not any(gate.guards(p) for p in ("/healthz", "/readyz", "/", "/static/app.js", "/openapi.json"))
    assert not Gate(Settings()).guards("/api/chat")


def test_401_says_bearer_and_whether_the_token_was_wrong() -> None:
    body, challenge = unauthorized_body(scope())
    assert challenge == 'Bearer realm="sidechat"' and body["error"]["type"] == "unauthorized"  # type: ignore[index]
    _, challenge = unauthorized_body(scope(bearer("nope")))
    assert challenge == 'Bearer realm="sidechat", error="invalid_token"'


def test_tokens_variable_is_parsed_and_short_tokens_refused() -> None:
    settings = Settings.from_env({"SIDECHAT_API_TOKENS": f" {ALICE} = alice , {BOB}=bob "})
    assert settings.api_tokens == ((ALICE, "alice"), (BOB, "bob"))
    assert ALICE not in repr(settings)
    for bad in ("alice", f"{ALICE}=", "=alice", "short=alice"):
        with pytest.raises(ConfigError, match="SIDECHAT_API_TOKENS"):
            Settings.from_env({"SIDECHAT_API_TOKENS": bad})


def test_trusted_header_only_from_a_trusted_proxy() -> None:
    gate = Gate(Settings(trusted_user_header="x-user"))
    assert gate.on
    assert gate.user(scope(("X-User", "carol"))) == "carol"
    assert gate.user(scope(("X-User", "carol"), client=("::1", 5000))) == "carol"
    assert gate.user(scope(("X-User", "carol"), client=("10.0.0.7", 5000))) is None
    assert gate.user(scope(("X-User", "carol"), client=None)) is None
    assert gate.user(scope()) is None  # from the proxy, but it named nobody
    assert gate.user(scope(("X-User", "  "))) is None
    assert gate.user(scope(("X-User", "x" * 201))) is None


def test_trusted_proxies_can_be_a_network() -> None:
    gate = Gate(Settings(trusted_user_header="x-user", trusted_proxies=("10.0.0.0/8",)))
    assert gate.user(scope(("X-User", "carol"), client=("10.1.2.3", 1))) == "carol"
    assert gate.user(scope(("X-User", "carol"))) is None  # loopback is no longer trusted
    with pytest.raises(ConfigError, match="SIDECHAT_TRUSTED_PROXIES"):
        Settings.from_env({"SIDECHAT_TRUSTED_PROXIES": "10.0.0.0/8,nginx"})


def test_header_and_tokens_together() -> None:
    gate = Gate(Settings(api_tokens=((ALICE, "alice"),), trusted_user_header="x-user"))
    assert gate.user(scope(("X-User", "carol"))) == "carol"
    # From elsewhere the header is ignored, and the token decides.
    outside = ("192.0.2.1", 1)
    assert gate.user(scope(("X-User", "carol"), bearer(ALICE), client=outside)) == "alice"
    assert gate.user(scope(("X-User", "carol"), client=outside)) is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()  # a new mtime even within the filesystem's timestamp granularity
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_token_file_is_read_and_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    write(path, f"# who may call\n{ALICE}=alice\n\n")
    clock = Clock()
    tokens = TokenFile(str(path), clock)
    gate = Gate(Settings(api_tokens_file=str(path)))
    gate.file = tokens
    assert gate.user(scope(bearer(ALICE))) == "alice"
    write(path, f"{BOB}=bob\n")
    assert gate.user(scope(bearer(ALICE))) == "alice"  # looked at no more than once a second
    clock.now = 1.5
    assert gate.user(scope(bearer(ALICE))) is None
    assert gate.user(scope(bearer(BOB))) == "bob"


def test_token_file_reload_on_demand_and_a_broken_file_keeps_the_old_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    write(path, f"{ALICE}=alice\n")
    tokens = TokenFile(str(path), Clock())
    write(path, f"{BOB}=bob\n")
    tokens.reload()  # what SIGHUP does
    assert list(tokens.digests.values()) == ["bob"]
    write(path, "this line is not token=user but just words\nbroken\n")
    with caplog.at_level(logging.ERROR, logger="sidechat"):
        tokens.reload()
    assert list(tokens.digests.values()) == ["bob"]
    assert "keeping the tokens read before" in caplog.text
    path.unlink()
    tokens.reload()
    assert list(tokens.digests.values()) == ["bob"]


def test_an_unreadable_token_file_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="SIDECHAT_API_TOKENS_FILE"):
        Gate(Settings(api_tokens_file=str(tmp_path / "missing")))
