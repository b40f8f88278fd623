"""`GET /api/usage?since=&until=`: the caller's tokens and cost per provider and model, and
what a user's budgets read when first checked (`spent_since`).

Deliberate choices:
- The ledger is the replies themselves: their `usage` and `cost_usd` (`chat.outcome`).
  There is no table of its own, so a reply whose conversation was deleted (or pruned) is
  gone from here too. The statements live here, over the store's database, because
  `chat.store` holds none about usage yet.
- A reply counts for the user who asked for it: its `asked_by` (stored when it is
  accepted; for a row from before that, the author of the message it answers, else the
  conversation's owner). In a shared conversation a member's replies are the member's
  own, billed to them, not to the owner; a regenerated reply is whoever regenerated it.
- Only the conversations the user owns or is a member of are searched (through their
  indexes), so a reply asked in a conversation they have since left is not counted.
- Grouped by provider and model as sidechat called them: the model asked for (or the
  provider's default), and after a fallback the provider and model that answered.
- A reply counts when it ended, which is when its cost is known: replies still running
  are left out, and replies that failed, were cancelled or were cut off count with what
  the provider had counted. The budgets add a reply as it ends too, so both agree on the
  day a reply belongs to; and `replies_by_completion` (schema.sql) is the index for it.
- `since` and `until` are ISO 8601 times or dates, compared with the time the reply
  ended, `since` inclusive and `until` exclusive; a date as `until` means the end of that
  day, so `since=2026-12-01&until=2026-12-31` is the whole of December 1 to 31.
- `cost_usd` is the sum of the costs that are known, null only when none of the replies
  counted has one; `unpriced_replies` says how many replies have none (a model without a
  price, a row stored before costs were), so a total is never silently short.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .budgets import stamp
from .database import Database
from .errors import InvalidFields
from .store import Store

_USAGE = """
SELECT json_extract(m.metadata, '$.provider') AS provider,
       json_extract(m.metadata, '$.model') AS model,
       count(*) AS replies,
       coalesce(sum(json_extract(m.metadata, '$.usage.input_tokens')), 0) AS input_tokens,
       coalesce(sum(json_extract(m.metadata, '$.usage.output_tokens')), 0) AS output_tokens,
       coalesce(sum(json_extract(m.metadata, '$.usage.cached_input_tokens')), 0) AS cached_input_tokens,
       sum(json_extract(m.metadata, '$.cost_usd')) AS cost_usd,
       count(*) - count(json_extract(m.metadata, '$.cost_usd')) AS unpriced_replies
FROM conversations c JOIN messages m ON m.conversation_id = c.id
WHERE c.id IN (SELECT id FROM conversations WHERE user_id = :user
               UNION SELECT conversation_id FROM members WHERE user_id = :user)
  AND m.role = 'assistant' AND m.completed_at >= :since AND m.completed_at < :until
  AND coalesce(json_extract(m.metadata, '$.asked_by'),
               (SELECT q.user_id FROM messages q WHERE q.id = json_extract(m.metadata, '$.user_message_id')),
               c.user_id) = :user
GROUP BY 1, 2 ORDER BY 1, 2
"""
_LINE = ("provider", "model", "replies", "input_tokens", "output_tokens", "cached_input_tokens", "cost_usd")
WHEN_PATTERN = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?"
)


def _database(store: Store) -> Database:
    return store._db  # the store's reading connection runs these (see the docstring)


async def usage_lines(store: Store, user: str, since: str | None, until: str | None) -> list[dict[str, Any]]:
    """One line per provider and model of the replies `user` asked for that ended in the range."""
    bounds = {"since": since or "", "until": until or "~"}  # "~" sorts after every timestamp
    rows = await _database(store).rows(_USAGE, {"user": user, **bounds})
    lines = []
    for row in rows:
        line = {name: row[name] for name in _LINE}
        line["unpriced_replies"] = row["unpriced_replies"]
        if line["cost_usd"] is not None:
            line["cost_usd"] = float(line["cost_usd"])
        lines.append(line)
    return lines


def total(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The lines summed; `cost_usd` the known part, null when no reply has a known cost."""
    out: dict[str, Any] = {
        name: sum(line[name] for line in lines)
        for name in ("replies", "input_tokens", "output_tokens", "cached_input_tokens", "unpriced_replies")
    }
    known = [line["cost_usd"] for line in lines if line["cost_usd"] is not None]
    out["cost_usd"] = sum(known, 0.0) if known or not lines else None
    return out


async def spent_since(store: Store, user: str, since: str) -> tuple[int, float]:
    """What `user`'s replies that ended since `since` (as stored) used: tokens, and known USD."""
    lines = await usage_lines(store, user, since, None)
    tokens = sum(line["input_tokens"] + line["output_tokens"] for line in lines)
    return tokens, sum((line["cost_usd"] or 0.0 for line in lines), 0.0)


def parse_when(raw: str, name: str, *, end: bool = False) -> str:
    """An ISO 8601 date or time as the database stores times (UTC, milliseconds, `Z`); a time
    without an offset is UTC; a date is its day's start, or with `end` the next day's."""
    problem = "must be an ISO 8601 date (2026-12-01) or time (2026-12-01T09:30:00Z)"
    if not WHEN_PATTERN.fullmatch(raw):
        raise InvalidFields({name: problem})
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            when = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1 if end else 0)
        else:
            when = datetime.fromisoformat(raw)
            when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        return stamp(when)
    except (ValueError, OverflowError):
        raise InvalidFields({name: f"{problem}; {raw[:40]!r} is no such day or time"}) from None


async def usage_report(store: Store, user: str, since: str | None, until: str | None) -> dict[str, Any]:
    """What `GET /api/usage` answers, from its `since` and `until` as sent (a 422 if bad)."""
    start = parse_when(since, "since") if since is not None else None
    end = parse_when(until, "until", end=True) if until is not None else None
    if start is not None and end is not None and end <= start:
        raise InvalidFields({"until": "must be later than since"})
    lines = await usage_lines(store, user, start, end)
    return {"since": start, "until": end, "usage": lines, "total": total(lines)}
