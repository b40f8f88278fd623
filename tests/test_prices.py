"""The price table: what the built-in one holds, how a model finds its price, what a reply
costs, and an operator's file laid over it (or refused, naming SIDECHAT_PRICES)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from chat.config import Settings
from chat.errors import StartupError
from chat.prices import Price, Prices, built_in, load_prices
from chat.providers.base import Usage
from chat.settings_types import PROVIDER_NAMES
from tests.live import chat_stream, serve
from tests.processes import PYTHON, free_port, run

SIDECHAT = str(Path(PYTHON).parent / "sidechat")  # the console script, beside this Python


@pytest.fixture(scope="module")
def prices() -> Prices:
    return built_in()


def test_the_built_in_table_prices_each_providers_default_and_common_models(prices: Prices) -> None:
    for provider, model in [
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4o"),
        ("openai", "gpt-4.1-nano"),
        ("openai", "gpt-5-mini"),
        ("openai", "o4-mini"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5"),
        ("anthropic", "claude-opus-4-1"),
        ("gemini", "gemini-2.5-flash"),
        ("gemini", "gemini-2.5-pro"),
        ("gemini", "gemini-2.5-flash-lite"),
        ("gemini", "gemini-2.0-flash"),
    ]:
        price = prices.price_of(provider, model)
        assert price is not None, (provider, model)
        assert 0 < price.input < price.output, (provider, model)
        assert price.cached_input is None or price.cached_input < price.input
    assert prices.price_of("openai", "gpt-4o-mini") == Price(0.15, 0.60, cached_input=0.075)
    assert set(prices.table) == set(PROVIDER_NAMES)


@pytest.mark.parametrize(
    ("provider", "model", "family"),
    [
        ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
        ("openai", "gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("anthropic", "claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("gemini", "gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("gemini", "models/gemini-2.5-flash", "gemini-2.5-flash"),
    ],
)
def test_a_dated_snapshot_finds_its_family(prices: Prices, provider: str, model: str, family: str) -> None:
    assert prices.price_of(provider, model) == prices.price_of(provider, family) is not None


def test_a_model_never_takes_the_price_of_one_it_begins_like(prices: Prices) -> None:
    assert prices.price_of("openai", "gpt-4o") != prices.price_of("openai", "gpt-4o-mini")
    assert prices.price_of("openai", "gpt-5") != prices.price_of("openai", "gpt-5-nano")
    for unknown in ("gpt-4o-mini-search-preview", "gpt-4", "gpt-4o-mini-tts", "llama-3.1-8b-instruct", ""):
        assert prices.price_of("openai", unknown) is None, unknown
    assert prices.price_of("gemini", "gemini-2.5-flash-preview-05-20") is None
    assert prices.price_of("nobody", "gpt-4o") is None


def test_local_and_demo_models_cost_nothing_whatever_their_name(prices: Prices) -> None:
    usage = Usage(1000, 1000)
    assert prices.cost("ollama", "llama3.2", usage) == 0.0
    assert prices.cost("ollama", "qwen3:30b-a3b", usage) == 0.0
    assert prices.cost("demo", "demo-1", usage) == 0.0


def test_a_few_tokens_cost_a_few_millionths_not_rounded(prices: Prices) -> None:
    cost = prices.cost("openai", "gpt-4o-mini", Usage(12, 2))
    assert cost == pytest.approx((12 * 0.15 + 2 * 0.60) / 1e6, rel=1e-12)
    assert cost == pytest.approx(3.0e-6)


def test_cached_input_is_priced_at_the_cached_rate(prices: Prices) -> None:
    cost = prices.cost("openai", "gpt-4o-mini", Usage(2006, 300, cached_input_tokens=1920))
    assert cost == pytest.approx(((2006 - 1920) * 0.15 + 1920 * 0.075 + 300 * 0.60) / 1e6)


def test_anthropic_cache_writes_at_the_write_rate_and_reads_at_the_read_rate(prices: Prices) -> None:
    usage = Usage(25 + 3000 + 400, 4, cached_input_tokens=3000, cache_write_tokens=400)
    cost = prices.cost("anthropic", "claude-sonnet-4-5", usage)
    assert cost == pytest.approx((25 * 3.0 + 3000 * 0.30 + 400 * 3.75 + 4 * 15.0) / 1e6)


def test_cache_prices_left_out_are_the_input_price() -> None:
    price = Price(input=1.0, output=2.0)
    assert price.cost(Usage(100, 10, cached_input_tokens=60, cache_write_tokens=40)) == pytest.approx(
        (100 * 1.0 + 10 * 2.0) / 1e6
    )


def test_unknown_usage_or_model_costs_none(prices: Prices) -> None:
    assert prices.cost("openai", "gpt-4o-mini", Usage()) is None
    assert prices.cost("openai", "my-finetune", Usage(10, 10)) is None
    assert prices.cost("openai", "gpt-4o-mini", Usage(10, None)) == pytest.approx(10 * 0.15 / 1e6)


def test_without_a_file_the_table_is_the_built_in_one() -> None:
    assert load_prices(None).table == built_in().table


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    return str(path)


def test_a_file_adds_a_model_and_changes_one_price_keeping_the_rest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[openai]\n"gpt-4o-mini" = { output = 0.5 }\n"my-finetune" = { input = 0.3, output = 1.2 }\n'
        '[ollama]\n"llama3.2" = { input = 0.01, output = 0.02 }\n',
    )
    prices = load_prices(path)
    assert prices.price_of("openai", "gpt-4o-mini") == Price(0.15, 0.5, cached_input=0.075)
    assert prices.price_of("openai", "my-finetune") == Price(0.3, 1.2)
    assert prices.price_of("openai", "my-finetune-2025-01-01") == Price(0.3, 1.2)
    assert prices.price_of("openai", "gpt-4o") == built_in().price_of("openai", "gpt-4o")
    assert prices.price_of("ollama", "llama3.2") == Price(0.01, 0.02)
    assert prices.price_of("ollama", "mistral") == Price(0.0, 0.0)  # its "*" is kept
    assert built_in().price_of("openai", "gpt-4o-mini") == Price(0.15, 0.60, cached_input=0.075)


def test_a_star_prices_every_other_model_of_its_provider(tmp_path: Path) -> None:
    prices = load_prices(write(tmp_path, '[openai]\n"*" = { input = 0.1, output = 0.1 }\n'))
    assert prices.price_of("openai", "llama-3.1-8b-instruct") == Price(0.1, 0.1)
    assert prices.price_of("openai", "gpt-4o") == built_in().price_of("openai", "gpt-4o")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[openai\n", "not valid TOML"),
        ('[opena]\n"gpt-4o" = { input = 1, output = 2 }\n', "[opena] is not a provider (known: openai,"),
        ('openai = "cheap"\n', "openai must be a table of models"),
        ('[openai]\n"gpt-4o" = 2.5\n', "openai.gpt-4o must be a table like"),
        ('[openai]\n"gpt-4o" = { inptu = 2.5 }\n', "openai.gpt-4o: unknown field 'inptu'"),
        ('[openai]\n"gpt-4o" = { input = "2.50" }\n', "openai.gpt-4o.input must be a number"),
        ('[openai]\n"gpt-4o" = { input = true }\n', "openai.gpt-4o.input must be a number"),
        ('[openai]\n"gpt-4o" = { input = nan }\n', "openai.gpt-4o.input must be a number"),
        ('[openai]\n"gpt-4o" = { output = -1 }\n', "openai.gpt-4o.output must not be negative"),
        ('[openai]\n"new-model" = { input = 1 }\n', "openai.new-model: a new model needs output"),
    ],
)
def test_a_bad_file_stops_start_up_naming_the_variable_and_the_entry(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StartupError) as info:
        load_prices(path)
    assert str(info.value).startswith(f"SIDECHAT_PRICES={path}: ")
    assert problem in str(info.value)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.toml")
    with pytest.raises(StartupError, match=r"SIDECHAT_PRICES=.*nowhere.toml: cannot read it: No such file"):
        load_prices(path)


@pytest.mark.anyio
async def test_a_bad_file_stops_the_server_with_one_line_naming_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, '[openai]\n"gpt-4o" = { inptu = 2.5 }\n')
    command = [SIDECHAT, "serve", "--port", str(free_port()), "--db", str(tmp_path / "chat.db")]
    result = await run(command, env={"SIDECHAT_PRICES": path}, timeout=60)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].endswith(
        f"sidechat cannot start: SIDECHAT_PRICES={path}: openai.gpt-4o: unknown field 'inptu'"
        " (fields: input, output, cached_input, cache_write)"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.anyio
async def test_a_file_given_prices_the_replies_of_a_running_server(tmp_path: Path) -> None:
    path = write(tmp_path, '[demo]\n"demo-1" = { input = 1000000, output = 0 }\n')
    settings = Settings(db=str(tmp_path / "chat.db"), demo_delay=0, prices=path)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        transcript = await chat_stream(client, {"message": "two words"})
    assert transcript.terminal.data["usage"]["input_tokens"] == 2
    assert transcript.terminal.data["cost_usd"] == 2.0  # a dollar a token, as the file says


@pytest.mark.parametrize("model", ["gpt-5-mini", "gpt-5-mini-2025-08-07", "gpt-4o-mini", "o4-mini"])
def test_the_responses_api_is_priced_as_openai_prices_its_models(prices: Prices, model: str) -> None:
    assert prices.price_of("openai-responses", model) == prices.price_of("openai", model) is not None
    assert prices.table["openai-responses"] == {}  # nothing copied: one table to keep current


def test_an_unknown_model_of_the_responses_api_is_unpriced_too(prices: Prices) -> None:
    assert prices.price_of("openai-responses", "gpt-4o-mini-tts") is None
    assert prices.cost("openai-responses", "my-finetune", Usage(10, 10)) is None


def test_a_file_prices_the_responses_api_apart_or_with_openai(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[openai]\n"gpt-4o" = { output = 9.0 }\n'
        '[openai-responses]\n"gpt-5-mini" = { input = 0.2, output = 1.5 }\n',
    )
    prices = load_prices(path)
    assert prices.price_of("openai-responses", "gpt-5-mini") == Price(0.2, 1.5)  # its own entry first
    assert prices.price_of("openai", "gpt-5-mini") == built_in().price_of("openai", "gpt-5-mini")
    assert prices.price_of("openai-responses", "gpt-4o") == Price(2.5, 9.0, cached_input=1.25)  # openai's
