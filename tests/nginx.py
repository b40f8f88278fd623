"""Real nginx (Debian's package) in front of sidechat, running the shipped `deploy/nginx.conf`.

The site config is the shipped file itself with three lines substituted (the upstream's
address, the listen address, the access log) and whatever lines a test edits on purpose
(a shorter `proxy_read_timeout`, say). Each substitution must match exactly one line, so
a change to the shipped file that a test would no longer cover fails loudly here instead.
Around it goes a small main config of our own (nginx needs an `events` block, and an
`http` block to include a site into) that keeps the pid file, the logs and every temporary
path inside the test's directory, so nginx needs nothing of /etc, /var or /run, and runs
as root (CI) or as anyone else.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.conftest import settings_for
from tests.fakeupstream import FakeUpstream, Reply, openai_chunk, openai_reply
from tests.live import serve, until
from tests.processes import ROOT, free_port

SHIPPED = ROOT / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


@dataclass
class Nginx:
    url: str
    directory: Path

    @property
    def access_log(self) -> str:
        path = self.directory / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def substitute(text: str, pattern: str, replacement: str) -> str:
    """`pattern`'s one match replaced, its indentation (group 1) kept."""
    changed, count = re.subn(pattern, lambda m: m[1] + replacement, text, flags=re.MULTILINE)
    assert count == 1, f"deploy/nginx.conf: expected one line matching {pattern!r}, found {count}"
    return changed


def site(upstream: str, port: int, directory: Path, edits: Mapping[str, str] | None = None) -> str:
    """The shipped site config, pointed at `upstream` (a URL) and listening on `port`; `edits`
    maps whole lines of it (without their indentation) to what a test puts there instead."""
    address = urlsplit(upstream).netloc
    lines = {
        "server 127.0.0.1:8000;": f"server {address};",
        "listen 80;": f"listen 127.0.0.1:{port};",
        "access_log /var/log/nginx/sidechat.access.log sidechat;": f"access_log {directory / 'access.log'} sidechat;",
        **(edits or {}),
    }
    text = SHIPPED.read_text()
    for line, replacement in lines.items():
        text = substitute(text, rf"^( *){re.escape(line)}$", replacement)
    return text


def main_config(directory: Path) -> str:
    """nginx.conf around the site: everything it writes stays in `directory`."""
    temp = "\n".join(f"    {name}_temp_path {directory / name};" for name in TEMP_PATHS)
    # As root, the workers would otherwise run as `nobody`, who cannot enter pytest's
    # directories (0700, root's) to write the temporary files of a large body.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} info;\n"
        "events {\n    worker_connections 256;\n}\n"
        f"http {{\n{temp}\n    include {directory / 'sidechat.conf'};\n}}\n"
    )


@asynccontextmanager
async def nginx(
    upstream: str, directory: Path, edits: Mapping[str, str] | None = None
) -> AsyncIterator[Nginx]:
    """nginx on a loopback port in front of `upstream`, in the foreground, stopped after the block."""
    if not Path(NGINX).exists():
        raise AssertionError(f"no nginx at {NGINX}: apt-get install nginx")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (directory / "sidechat.conf").write_text(site(upstream, port, directory, edits))
    config = directory / "nginx.conf"
    config.write_text(main_config(directory))
    command = [NGINX, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")]
    with (directory / "stderr.log").open("wb") as output:
        process = subprocess.Popen([*command, "-g", "daemon off;"], stdout=output, stderr=subprocess.STDOUT)
    server = Nginx(f"http://127.0.0.1:{port}", directory)

    async def listening() -> bool:
        if process.poll() is not None:
            said = (directory / "stderr.log").read_text(errors="replace") + server.error_log
            raise AssertionError(f"nginx exited with {process.returncode}:\n{said}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    try:
        await until(listening, what="nginx to listen")
        yield server
    finally:
        if process.poll() is None:
            process.terminate()  # a fast shutdown: open streams are closed, not waited for
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 10)


def held(hold: asyncio.Event) -> Reply:
    """A reply of "Hel", then nothing until `hold` is set, then "lo" and the end."""
    return Reply([openai_chunk("Hel"), hold, *openai_reply("lo")])


@asynccontextmanager
async def fronted(
    upstream: FakeUpstream, tmp_path: Path, edits: dict[str, str] | None = None, **changes: object
) -> AsyncIterator[tuple[str, Nginx]]:
    """sidechat's own URL, and nginx in front of it with the shipped config (and `edits`)."""
    async with serve(settings_for(upstream, tmp_path, **changes)) as url:
        async with nginx(url, tmp_path / "nginx", edits) as proxy:
            yield url, proxy


def through(proxy: Nginx) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=proxy.url, timeout=10)


def chat(
    http: httpx.AsyncClient, path: str = "/api/chat/stream"
) -> AbstractAsyncContextManager[httpx.Response]:
    return http.stream("POST", path, json={"message": "hi"})
