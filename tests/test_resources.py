"""The shipped files are found in the package first, then beside it (a checkout)."""

from __future__ import annotations

import pytest

from chat.errors import StartupError
from chat.resources import resource


def test_a_checkout_finds_the_schema_and_the_page_at_its_root() -> None:
    assert resource("schema.sql").read_text().startswith("-- sidechat's whole schema")
    assert (resource("static") / "index.html").is_file()


def test_a_missing_file_is_a_startup_error_naming_it() -> None:
    with pytest.raises(StartupError) as info:
        resource("nothing-here.sql")
    assert "nothing-here.sql is missing" in str(info.value)
