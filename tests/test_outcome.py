"""How a reply ended, as its row stores it: status, usage and cost, whichever way it ended."""

from __future__ import annotations

import pytest

from chat.outcome import CANCELLED, SHUTDOWN, Relayed, conclude
from chat.prices import Price, Prices
from chat.providers.base import Answerer, Finish, ProviderError, Usage

PRICES = Prices({"openai": {"gpt-4o-mini": Price(0.15, 0.60, cached_input=0.075)}, "anthropic": {}})
ASKED = {"provider": "openai", "model": "gpt-4o-mini", "asked_by": "alice"}


def test_a_completed_reply_costs_its_finishs_usage_with_cached_input() -> None:
    relayed = Relayed(finish=Finish("stop", Usage(100, 10, cached_input_tokens=80)), ttft_ms=5)
    status, metadata = conclude(relayed, None, ASKED, 0.25, PRICES)
    assert status == "completed"
    assert metadata["usage"] == {"input_tokens": 100, "output_tokens": 10, "cached_input_tokens": 80}
    assert metadata["cost_usd"] == pytest.approx((20 * 0.15 + 80 * 0.075 + 10 * 0.60) / 1e6)
    assert metadata["asked_by"] == "alice" and metadata["duration_ms"] == 250


@pytest.mark.parametrize(("stop", "status"), [(CANCELLED, "cancelled"), (SHUTDOWN, "interrupted")])
def test_a_reply_stopped_before_its_end_is_billed_what_was_counted(stop: str, status: str) -> None:
    relayed = Relayed(usage=Usage(40, 0))
    got, metadata = conclude(relayed, stop, ASKED, 1.0, PRICES)
    assert got == status
    assert metadata["usage"] == {"input_tokens": 40, "output_tokens": 0}
    assert metadata["cost_usd"] == pytest.approx(40 * 0.15 / 1e6)


def test_a_failed_reply_is_billed_what_was_counted_before_it_failed() -> None:
    relayed = Relayed(usage=Usage(40, 3), error=ProviderError("overloaded", "Overloaded"))
    status, metadata = conclude(relayed, None, ASKED, 1.0, PRICES)
    assert status == "failed" and metadata["error"]["type"] == "overloaded"
    assert metadata["cost_usd"] == pytest.approx((40 * 0.15 + 3 * 0.60) / 1e6)


def test_a_finish_that_counted_nothing_leaves_the_counts_told_before() -> None:
    relayed = Relayed(finish=Finish("stop"), usage=Usage(7, 2))
    _, metadata = conclude(relayed, None, ASKED, 1.0, PRICES)
    assert metadata["usage"] == {"input_tokens": 7, "output_tokens": 2}


def test_nothing_counted_or_no_price_is_a_null_cost() -> None:
    _, counted_nothing = conclude(Relayed(finish=Finish("stop")), None, ASKED, 1.0, PRICES)
    assert counted_nothing["usage"] == {"input_tokens": None, "output_tokens": None}
    assert counted_nothing["cost_usd"] is None
    unknown = {**ASKED, "model": "my-finetune"}
    _, unpriced = conclude(Relayed(finish=Finish("stop", Usage(5, 5))), None, unknown, 1.0, PRICES)
    assert unpriced["cost_usd"] is None
    _, no_table = conclude(Relayed(finish=Finish("stop", Usage(5, 5))), None, ASKED, 1.0)
    assert no_table["cost_usd"] is None


def test_after_a_fallback_the_answering_provider_and_model_are_priced() -> None:
    relayed = Relayed(
        finish=Finish("stop", Usage(10, 10)),
        answerer=Answerer("openai", "gpt-4o-mini"),
    )
    asked = {"provider": "anthropic", "model": "claude-opus-4-1"}
    _, metadata = conclude(relayed, None, asked, 1.0, PRICES)
    assert (metadata["provider"], metadata["model"]) == ("openai", "gpt-4o-mini")
    assert metadata["requested"] == asked
    assert metadata["cost_usd"] == pytest.approx((10 * 0.15 + 10 * 0.60) / 1e6)
