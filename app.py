"""sidechat from a checkout: `python app.py [--host] [--port] [--db]` serves, and
`uvicorn app:app` serves the app the environment configures.

The app itself lives in the package (`chat.app`); this file only points at it,
so that an installed sidechat needs no top-level module of its own.
"""

from __future__ import annotations

import sys

import chat.app
from chat.app import Sidechat, create_app
from chat.cli import serve_main

__all__ = ["create_app"]


def __getattr__(name: str) -> Sidechat:
    if name != "app":
        raise AttributeError(name)
    return chat.app.app  # built on first use, from the environment


if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:], prog="python app.py"))
