"""`GET /api/usage` in the OpenAPI document (`chat.usage`): its route and its answer."""

from __future__ import annotations

from typing import Any

from .openapi_responses import answer, operation
from .openapi_schemas import COST, Schema, closed, nullable, ref

COUNTS: dict[str, Schema] = {
    "replies": {"type": "integer", "minimum": 0, "description": "replies that ended, however they ended"},
    "input_tokens": {"type": "integer", "minimum": 0},
    "output_tokens": {"type": "integer", "minimum": 0},
    "cached_input_tokens": {"type": "integer", "minimum": 0, "description": "part of input_tokens"},
    "cost_usd": {
        **COST,
        "description": "USD, not rounded: the sum of the known costs; null when none of the replies has one",
    },
    "unpriced_replies": {
        "type": "integer",
        "minimum": 0,
        "description": "replies whose cost is not known (a model without a price, a row stored"
        " before costs were): not in cost_usd",
    },
}


def usage_schemas() -> dict[str, Schema]:
    return {
        "UsageLine": closed({"provider": nullable("string"), "model": nullable("string"), **COUNTS}),
        "UsageReport": closed(
            {
                "since": nullable("string", format="date-time"),
                "until": nullable("string", format="date-time"),
                "usage": {"type": "array", "items": ref("schemas", "UsageLine")},
                "total": closed(COUNTS),
            }
        ),
    }


def usage_paths() -> dict[str, Any]:
    return {
        "/api/usage": {
            "get": {
                **operation(
                    "usage",
                    "Your tokens and cost per provider and model, over a time range",
                    {
                        200: answer(
                            "by provider and model as sidechat called them", ref("schemas", "UsageReport")
                        )
                    },
                    {422: ("invalid_request",)},
                    parameters=("Since", "Until"),
                ),
                "description": "The replies you asked for (in a shared conversation, a member's are"
                " the member's), by when they ended; grouped by the provider and model sidechat"
                " called (after a fallback, the one that answered). Replies still running are not"
                " counted; cancelled and failed ones are, with what the provider had counted."
                " Replies of deleted conversations are gone from it.",
            }
        }
    }
