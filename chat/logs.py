"""The log: one line per request and one per reply, as text or as JSON (`SIDECHAT_LOG_FORMAT`).

A line carries ids and figures, never message text (unless `SIDECHAT_LOG_CONTENT=1`)
and never a key: the request id (to find every line of one call, the `start`
event names it too), the user, the conversation and message, provider and model,
how it ended, time to first token, duration, tokens and cost. In JSON each line
is one object whose fields are those; in text, the same fields as `name=value`.
Every other log record of the process goes through the same formatter, so a
JSON log is JSON throughout.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from .telemetry import RequestRecord, Sink

if TYPE_CHECKING:
    from .config import Settings
    from .generations import Generation

requests_log = logging.getLogger("sidechat.requests")
replies_log = logging.getLogger("sidechat.replies")
FIELDS = "sidechat_fields"  # where a record carries its fields


def route_template(scope: Scope, routes: list[BaseRoute] | None = None) -> str | None:
    """The route a request matched, as written (`/api/messages/{message_id}/stream`), never
    the raw path: the path holds ids, and a label or a log field must come from a bounded set."""
    route = scope.get("route")
    if route is None and routes is not None:  # a Starlette that does not say (before 0.47)
        partial = None  # the path matched, the method did not (a 405): Starlette's own choice
        for candidate in routes:
            match = candidate.matches(scope)[0]
            if match is Match.FULL:
                route = candidate
                break
            if match is Match.PARTIAL and partial is None:
                partial = candidate
        route = route or partial
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class LogSink(Sink):
    def __init__(self, settings: Settings, routes: list[BaseRoute] | None = None) -> None:
        self.content = settings.log_content
        self.routes = routes

    def request_ended(self, record: RequestRecord) -> None:
        scope = record.scope
        fields = {
            "event": "request",
            "request_id": record.request_id,
            "method": scope.get("method"),
            "route": route_template(scope, self.routes),
            "status": record.status,
            "duration_ms": round(record.seconds * 1000, 1),
            "client": record.client,
            "user": record.user,
        }
        requests_log.info(
            "%s %s %s", scope.get("method"), fields["route"], record.status, extra={FIELDS: fields}
        )

    def generation_ended(self, generation: Generation) -> None:
        if (row := generation.final_row()) is not None:
            self._reply(generation, row.status, row.metadata)

    def _reply(self, generation: Generation, status: str, metadata: dict[str, Any]) -> None:
        usage = metadata.get("usage") or {}
        error = metadata.get("error") or {}
        fields: dict[str, Any] = {
            "event": "reply",
            "request_id": metadata.get("request_id"),
            "user": generation.user,
            "conversation_id": generation.conversation_id,
            "message_id": generation.message_id,
            "provider": metadata.get("provider"),
            "model": metadata.get("model"),
            "outcome": status,
            "finish_reason": metadata.get("finish_reason"),
            "error": error.get("type"),
            "ttft_ms": metadata.get("ttft_ms"),
            "duration_ms": metadata.get("duration_ms"),
            "deltas": generation.token_count,
            "input_tokens": usage.get("input_tokens"),
            "output_tokens": usage.get("output_tokens"),
            "cost_usd": metadata.get("cost_usd"),
        }
        if self.content:
            turns = generation.request.turns
            fields["message"] = turns[-1].content if turns else None
            fields["reply"] = generation.text
        replies_log.info("reply %s %s", generation.message_id, status, extra={FIELDS: fields})


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, FIELDS, None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message`, then the record's fields as `name=value`."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, FIELDS, None)
        if fields:
            shown = " ".join(f"{k}={_text(v)}" for k, v in fields.items() if k != "event" and v is not None)
            text = f"{text} {shown}"
        return text


def _text(value: object) -> str:
    """A field as text on one line: strings with spaces, quotes or newlines are quoted."""
    if isinstance(value, str) and (not value or any(c.isspace() or c in "\"'=" for c in value)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def configure(log_format: str, *, level: int = logging.INFO) -> None:
    """The process's log, to stderr, in `log_format`; httpx's line per upstream request off."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # theirs go through ours
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
