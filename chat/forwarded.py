"""Who is really calling, through the proxies we trust (`SIDECHAT_TRUSTED_PROXIES`).

uvicorn runs without its proxy headers (`sidechat serve`): the trusted-user
header is believed by the address of the peer itself, which uvicorn would
replace with whatever `X-Forwarded-For` says. The caller's address, for the
logs, is worked out here instead: when the peer is a trusted proxy, the
rightmost address of `X-Forwarded-For` that is not one of ours is the client
(anything left of it was written by the client and proves nothing).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Proxies:
    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in networks]

    def trusts(self, address: object) -> bool:
        if not isinstance(address, str):  # a peer with no address (uvicorn 0.30's proxy headers)
            return False
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:  # a Unix socket's peer, or not an address: the socket's mode guards it
            return False
        return any(ip in network for network in self.networks)

    def peer_trusted(self, scope: Scope) -> bool:
        client = scope.get("client")
        return client is not None and self.trusts(client[0])

    def client(self, scope: Scope) -> str | None:
        """The caller's address: the peer's, or the one a trusted proxy forwarded."""
        peer = scope.get("client")
        if not peer or not isinstance(peer[0], str):
            return None
        address: str = peer[0]
        if not self.trusts(address):
            return address
        forwarded = [
            hop.strip()
            for name, value in scope["headers"]
            if name == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
        ]
        for hop in reversed(forwarded):
            if not hop:
                continue
            address = hop
            if not self.trusts(hop):
                break
        return address[:64]  # a header's word, bounded, before it reaches a log line
