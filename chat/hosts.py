"""Which `Host` names are served: the guard against DNS rebinding.

A web page on any site can make a browser send requests to 127.0.0.1 under a
name of its own choosing (it points its name at 127.0.0.1 after the page has
loaded). The `Host` header still carries that name, so serving only the names
that are ours stops such a page from reading or spending anything: the local
names, the address sidechat listens on, and what `SIDECHAT_ALLOWED_HOSTS` adds
(`*` for any, for an operator who puts sidechat behind a proxy of their own).
"""

from __future__ import annotations

from starlette.types import Scope

from .config import Settings

LOCAL = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(value: str) -> str:
    """`Host` without its port, lower-case; IPv6 without its brackets."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class AllowedHosts:
    def __init__(self, settings: Settings) -> None:
        # With tokens, a rebinding page gets nowhere: it has no token to send.
        self.any = "*" in settings.allowed_hosts or bool(settings.api_tokens or settings.api_tokens_file)
        self.names = LOCAL | {settings.host.lower()} | {h.lower() for h in settings.allowed_hosts}

    def allow(self, scope: Scope) -> bool:
        if self.any:
            return True
        for name, value in scope["headers"]:
            if name == b"host":
                return host_name(value.decode("latin-1")) in self.names
        return False  # HTTP/1.1 requires a Host; one without it is not a browser's
