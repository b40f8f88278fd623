"""Who is asking: a bearer token, a header set by a trusted proxy, or the one local user.

    SIDECHAT_API_TOKENS="token=alice,…"    every /api and /v1 call needs `Authorization: Bearer`
    SIDECHAT_API_TOKENS_FILE=/etc/…        the same, one `token=user` a line, re-read on change
    SIDECHAT_TRUSTED_USER_HEADER=X-User    the user named by the app or proxy in front, taken
                                           only from SIDECHAT_TRUSTED_PROXIES (loopback)
    none of these                          one user, `local`, as a single-user sidecar has

Deliberate choices:
- Tokens are known by their SHA-256 digests, and a presented token is looked up by its
  own digest in a dict: one hash per request however many users there are (a scan with
  `hmac.compare_digest` over 10,000 tokens was a third of a chat's CPU in bench/). The
  time taken tells a guesser nothing about how much of a token was right: what is
  compared is a digest, whose bytes have no relation to the token's.
- The token file is looked at (one `stat`) at most once a second, and on SIGHUP at
  once; a file that has become unreadable or malformed keeps the tokens it had, with
  an error in the log, rather than locking every user out.
- The trusted header is believed only when the connection itself comes from a
  trusted proxy: the peer address as the socket has it, which is why `sidechat serve`
  leaves X-Forwarded-For to us rather than to uvicorn.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from starlette.types import Scope

from .config import Settings, parse_tokens
from .errors import StartupError
from .forwarded import Proxies
from .v1_errors import is_v1, unauthorized

log = logging.getLogger("sidechat")

LOCAL_USER = "local"
USER = "sidechat.user"  # where the scope keeps who is asking
GUARDED = ("/api/", "/v1/")
MAX_USER_CHARS = 200
Digests = dict[bytes, str]  # token's SHA-256 digest -> user


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class TokenFile:
    """`token=user` lines (blank lines and `#` comments skipped), re-read when the file changes."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock
        self._checked = clock()
        self._seen: tuple[int, int, int] | None = None
        try:
            self.digests, self._seen = self._read()
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot read SIDECHAT_API_TOKENS_FILE {path}: {exc}") from None

    def _identity(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _read(self) -> tuple[Digests, tuple[int, int, int]]:
        seen = self._identity()
        lines = (line for line in self.path.read_text().splitlines() if not line.lstrip().startswith("#"))
        return {digest(token): user for token, user in parse_tokens(lines)}, seen

    def current(self) -> Digests:
        now = self._clock()
        if now - self._checked >= 1.0:
            self._checked = now
            self.reload(only_if_changed=True)
        return self.digests

    def reload(self, *, only_if_changed: bool = False) -> None:
        try:
            if only_if_changed and self._identity() == self._seen:
                return
            self.digests, self._seen = self._read()
        except (OSError, ValueError) as exc:
            log.error("SIDECHAT_API_TOKENS_FILE %s: %s; keeping the tokens read before", self.path, exc)
            return
        log.info("SIDECHAT_API_TOKENS_FILE %s read: %d tokens", self.path, len(self.digests))


class Gate:
    """The user a request acts as, or None: it must be refused (401)."""

    def __init__(self, settings: Settings) -> None:
        self._fixed: Digests = {digest(token): user for token, user in settings.api_tokens}
        self.file = TokenFile(settings.api_tokens_file) if settings.api_tokens_file else None
        self._header = settings.trusted_user_header.lower().encode() if settings.trusted_user_header else None
        self.proxies = Proxies(settings.trusted_proxies)
        self.tokens = bool(self._fixed) or self.file is not None
        self.on = self.tokens or self._header is not None

    def guards(self, path: str) -> bool:
        return self.on and path.startswith(GUARDED)

    def user(self, scope: Scope) -> str | None:
        if not self.on:
            return LOCAL_USER
        bearer: bytes | None = None
        named: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                bearer = value
            elif name == self._header:
                named = value
        if named is not None and self.proxies.peer_trusted(scope):
            user = named.decode("latin-1").strip()
            if 0 < len(user) <= MAX_USER_CHARS and user.isprintable():
                return user
        if bearer is not None and self.tokens:
            scheme, _, token = bearer.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return self._user_of(token.strip())
        return None

    def _user_of(self, token: str) -> str | None:
        presented = digest(token)
        if self.file is not None and (user := self.file.current().get(presented)) is not None:
            return user
        return self._fixed.get(presented)


def unauthorized_body(scope: Scope) -> tuple[dict[str, object], str]:
    """The 401 body and its WWW-Authenticate value (RFC 6750: `invalid_token` for a wrong one);
    under /v1, the body in OpenAI's shape (an SDK's `api_key` is the token there)."""
    presented = any(name == b"authorization" for name, _ in scope["headers"])
    challenge = 'Bearer realm="sidechat"' + (', error="invalid_token"' if presented else "")
    if is_v1(scope):
        return unauthorized(presented).body(), challenge
    message = "this token is not valid" if presented else "an Authorization: Bearer token is required"
    return {"error": {"type": "unauthorized", "message": message}}, challenge
