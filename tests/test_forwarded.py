"""The caller's address through trusted proxies: the rightmost hop that is not ours."""

from __future__ import annotations

import pytest

from chat.forwarded import Proxies

PROXIES = Proxies(("127.0.0.1/32", "10.0.0.0/8", "::1/128"))


def scope(peer: str | None, *forwarded: str) -> dict[str, object]:
    return {
        "client": (peer, 5000) if peer else None,
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
    }


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", (), "203.0.113.9"),  # no proxy
        ("203.0.113.9", ("198.51.100.1",), "203.0.113.9"),  # an untrusted peer cannot forward
        ("127.0.0.1", (), "127.0.0.1"),  # a trusted peer that forwards nothing is the client
        ("127.0.0.1", ("198.51.100.1",), "198.51.100.1"),
        ("127.0.0.1", ("6.6.6.6, 198.51.100.1",), "198.51.100.1"),  # the client wrote the left part
        ("10.0.0.1", ("198.51.100.1, 10.0.0.2",), "198.51.100.1"),  # through two of ours
        ("10.0.0.1", ("198.51.100.1", "10.0.0.2"), "198.51.100.1"),  # as two headers
        ("10.0.0.1", ("10.0.0.3, 10.0.0.2",), "10.0.0.3"),  # all ours: the farthest
        ("::1", ("2001:db8::1",), "2001:db8::1"),
        ("127.0.0.1", ("unknown",), "unknown"),  # RFC 7239's hidden client, said as it is
        ("127.0.0.1", (" , ",), "127.0.0.1"),  # empty hops are no hops
        (None, ("198.51.100.1",), None),  # a Unix socket's peer
    ],
)
def test_the_client_is_the_rightmost_hop_we_do_not_run(
    peer: str | None, forwarded: tuple[str, ...], client: str | None
) -> None:
    assert PROXIES.client(scope(peer, *forwarded)) == client


def test_a_forwarded_word_is_bounded() -> None:
    assert PROXIES.client(scope("127.0.0.1", "x" * 500)) == "x" * 64


def test_only_a_trusted_peer_is_trusted() -> None:
    assert PROXIES.peer_trusted(scope("10.1.2.3"))
    assert not PROXIES.peer_trusted(scope("203.0.113.9"))
    assert not PROXIES.peer_trusted(scope(None))
    assert not PROXIES.trusts("not an address")


def test_a_peer_without_an_address_is_no_client_and_not_trusted() -> None:
    # uvicorn 0.30's own proxy-header handling leaves `client` as (None, 0) in some cases.
    odd = {"client": (None, 0), "headers": [(b"x-forwarded-for", b"198.51.100.1")]}
    assert PROXIES.client(odd) is None
    assert not PROXIES.peer_trusted(odd)
