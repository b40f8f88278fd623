"""`GET /openapi.json`: the API described as OpenAPI 3.1."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def document() -> dict[str, Any]:
    return {"openapi": "3.1.0", "info": {"title": "sidechat", "version": "0"}, "paths": {}}


async def openapi(request: Request) -> Response:
    return JSONResponse(document())


routes = [Route("/openapi.json", openapi, methods=["GET"])]
