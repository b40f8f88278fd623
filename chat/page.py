"""The page and its files, served with headers that keep a browser from doing more than it should.

The Content-Security-Policy allows scripts, styles, images and connections from
this origin only, and no inline script: an injected `<script>` or a remote
script runs nowhere. The page cannot be framed (`frame-ancestors 'none'`,
`X-Frame-Options`), types are not sniffed, and no referrer leaves.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
        " frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


class Files(StaticFiles):
    """`static/`, with the page's headers on every file."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(HEADERS)
        return response


def index(page: Path) -> Callable[[Request], Awaitable[Response]]:
    """The route that serves the page itself."""

    async def serve_page(request: Request) -> Response:
        return FileResponse(page, headers=HEADERS)

    return serve_page
