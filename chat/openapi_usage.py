"""Usage in the OpenAPI document: `GET /api/usage` (`chat.usage`), its route and its answer,
and the `Usage` and `Cost` each reply carries (`chat.outcome`)."""

from __future__ import annotations

from typing import Any

from .openapi_responses import answer, operation
from .openapi_schemas import Schema, closed, nullable, ref

USAGE = closed(
    {
        "input_tokens": nullable("integer", description="the whole prompt, the cached part included"),
        "output_tokens": nullable("integer", description="the reply, reasoning and thinking included"),
        "cached_input_tokens": {
            "type": "integer",
            "description": "the part of the prompt read from the provider's cache, when it said",
        },
        "cache_write_tokens": {
            "type": "integer",
            "description": "the part written to it (Anthropic's cache creation), when it said",
        },
    },
    optional=("cached_input_tokens", "cache_write_tokens"),
)
COST = nullable(
    "number",
    minimum=0,
    description="USD, not rounded; null when the model has no price (`SIDECHAT_PRICES`) or the"
    " provider counted nothing",
)


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
        "Usage": USAGE,
        "Cost": COST,
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
