"""The command line: `sidechat` (the console script), `python -m chat`, and `python app.py` (`serve` alone).

    sidechat serve [--host HOST] [--port PORT] [--db PATH]
    sidechat prune --days N [--dry-run] [--vacuum] [--db PATH]
    sidechat export --conversation ID [--format json|markdown] [--db PATH]
    sidechat stats [--json] [--db PATH]
    sidechat backup PATH [--db PATH]
    sidechat --version

Each command is a function taking the parsed arguments and returning the exit
status; `main` parses and dispatches, so a command is one function and one
subparser. The maintenance commands' work is in `chat.maintenance`, `chat.prune`
and `chat.export`; here they are parsed, run, and their one-line errors printed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

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
    from .stores import shown

    try:
        settings = Settings.from_env().override(host=args.host, port=args.port, db=args.db)
        app = create_app(settings)
    except (ConfigError, StartupError) as exc:
        print(f"sidechat cannot start: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    configure_logs(settings.log_format)
    stored = f"database {shown(settings.db)}" if settings.stored else "storing nothing (SIDECHAT_STORE=none)"
    logging.getLogger("sidechat").info("provider %s; %s", settings.provider, stored)
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


def maintain(args: argparse.Namespace, work: Callable[[Settings], Coroutine[Any, Any, str]]) -> int:
    """Run a maintenance command's work against the database the server would use; print
    what it answers, or its one-line error."""
    from .errors import StartupError
    from .maintenance import CommandError
    from .stores import is_postgres, shown

    try:
        settings = Settings.from_env().override(db=args.db)
    except ConfigError as exc:
        print(f"sidechat {args.name}: {exc}", file=sys.stderr)
        return 2
    if is_postgres(settings.db):  # these work on the SQLite file; PostgreSQL has its own tools
        print(
            f"sidechat {args.name}: works on a SQLite database, and {shown(settings.db)} is PostgreSQL:"
            " use pg_dump for backups and export, and psql for the rest",
            file=sys.stderr,
        )
        return 2
    try:
        said = asyncio.run(work(settings))
    except (CommandError, StartupError) as exc:
        print(f"sidechat {args.name}: {exc}", file=sys.stderr)
        return 1
    print(said)
    return 0


def prune(args: argparse.Namespace) -> int:
    from .prune import prune as prune_database

    async def work(settings: Settings) -> str:
        pruned = await prune_database(
            settings.db,
            days=args.days,
            dry_run=args.dry_run,
            vacuum=args.vacuum,
            busy_timeout=settings.db_busy_timeout,
        )
        return pruned.as_text()

    return maintain(args, work)


def export(args: argparse.Namespace) -> int:
    from .export import export as export_conversation

    async def work(settings: Settings) -> str:
        return await export_conversation(
            settings.db, args.conversation, args.format, busy_timeout=settings.db_busy_timeout
        )

    return maintain(args, work)


def stats(args: argparse.Namespace) -> int:
    from .maintenance import stats as database_stats

    async def work(settings: Settings) -> str:
        found = await database_stats(settings.db, busy_timeout=settings.db_busy_timeout)
        return found.as_json() if args.json else found.as_text()

    return maintain(args, work)


def backup(args: argparse.Namespace) -> int:
    from .maintenance import backup as back_up

    async def work(settings: Settings) -> str:
        made = await back_up(settings.db, args.path, busy_timeout=settings.db_busy_timeout)
        return made.as_text(settings.db)

    return maintain(args, work)


def count(text: str) -> int:
    """A whole number of 0 or more, for argparse."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, not {text!r}")
    return int(text)


def maintenance_parsers(commands: Any) -> None:
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--db", help="SQLite database path (default $SIDECHAT_DB or ./sidechat.db)")

    def command(name: str, run: Callable[[argparse.Namespace], int], what: str) -> argparse.ArgumentParser:
        added: argparse.ArgumentParser = commands.add_parser(
            name, parents=[database], help=what, description=what
        )
        added.set_defaults(command=run, name=name)
        return added

    pruning = command(
        "prune", prune, "delete conversations idle for N days or more, and give their space back"
    )
    pruning.add_argument("--days", type=count, required=True, help="idle for this many days or more; 0: all")
    pruning.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    pruning.add_argument(
        "--vacuum", action="store_true", help="rewrite the whole file (VACUUM): shrinks an older database"
    )
    exporting = command("export", export, "print one conversation and its messages")
    exporting.add_argument("--conversation", type=int, required=True, metavar="ID")
    exporting.add_argument("--format", choices=("json", "markdown"), default="json")
    counting = command("stats", stats, "conversations, messages, replies by status, database size")
    counting.add_argument("--json", action="store_true", help="as JSON")
    copying = command("backup", backup, "a consistent copy of the database, while the server runs")
    copying.add_argument("path", metavar="PATH", help="the copy's file, or a directory to put it in")


def parser(prog: str = "sidechat") -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=prog, description="A small, fast streaming-chat service.")
    top.add_argument("--version", action="version", version=f"sidechat {package_version()}")
    commands = top.add_subparsers(title="commands", metavar="COMMAND")
    serve_arguments(
        commands.add_parser("serve", help="serve the API and the page", description="Serve sidechat.")
    )
    maintenance_parsers(commands)
    return top


def main(argv: Sequence[str] | None = None, *, prog: str = "sidechat") -> int:
    args = parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    command: Callable[[argparse.Namespace], int] | None = getattr(args, "command", None)
    if command is None:
        parser(prog).print_help(sys.stderr)
        return 2
    return command(args)
