"""The command line: `sidechat` (the console script), `python -m chat`, and `python app.py` (`serve` alone).

    sidechat serve [--host HOST] [--port PORT] [--db PATH]
    sidechat --version

Each command is a function taking the parsed arguments and returning the exit
status; `main` parses and dispatches, so commands to come (prune, export, stats)
are one function and one subparser each.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from .config import ConfigError, Settings


def package_version() -> str:
    try:
        return version("sidechat")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .errors import StartupError
    from .logs import configure as configure_logs

    try:
        settings = Settings.from_env().override(host=args.host, port=args.port, db=args.db)
        app = create_app(settings)
    except (ConfigError, StartupError) as exc:
        print(f"sidechat cannot start: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    configure_logs(settings.log_format)
    logging.getLogger("sidechat").info("provider %s; database %s", settings.provider, settings.db)
    # No proxy headers: the trusted user header is believed by the address of the peer itself,
    # which uvicorn would otherwise replace with whatever X-Forwarded-For says; the log's client
    # address is taken through the trusted proxies by sidechat (`chat.forwarded`). No access
    # log of uvicorn's, and no logging set-up of its: sidechat logs each request itself.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        proxy_headers=False,
        access_log=False,
        log_config=None,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises Ctrl-C again once it has shut down in order
        return 130
    return 0 if server.started else 1  # not started: the lifespan said why


def serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--host", help="interface to listen on (default $SIDECHAT_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default $SIDECHAT_PORT or 8000)")
    parser.add_argument("--db", help="SQLite database path (default $SIDECHAT_DB or ./sidechat.db)")
    parser.set_defaults(command=serve)
    return parser


def serve_main(argv: Sequence[str], *, prog: str) -> int:
    """`serve` as a program of its own: `python app.py [--host] [--port] [--db]`."""
    return serve(
        serve_arguments(argparse.ArgumentParser(prog=prog, description="Serve sidechat.")).parse_args(argv)
    )


def parser(prog: str = "sidechat") -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=prog, description="A small, fast streaming-chat service.")
    top.add_argument("--version", action="version", version=f"sidechat {package_version()}")
    commands = top.add_subparsers(title="commands", metavar="COMMAND")
    serve_arguments(
        commands.add_parser("serve", help="serve the API and the page", description="Serve sidechat.")
    )
    return top


def main(argv: Sequence[str] | None = None, *, prog: str = "sidechat") -> int:
    args = parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    command: Callable[[argparse.Namespace], int] | None = getattr(args, "command", None)
    if command is None:
        parser(prog).print_help(sys.stderr)
        return 2
    return command(args)
