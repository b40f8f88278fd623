"""Keeping replies: a refused final write is tried again until it goes through, or given up
on at shutdown with the loss said; checkpoints by size and by time, and backing off."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chat.keeping import Keeper
from chat.store import StorageFailed, Store
from tests.live import until

pytestmark = pytest.mark.anyio


class Refusing(Store):
    """A real store whose writes are refused while `refusing` is set, and that counts tries."""

    refusing = True
    finishes = 0
    checkpoints = 0

    async def finish_message(self, message_id: int, **values: Any) -> None:
        self.finishes += 1
        if self.refusing:
            raise StorageFailed("the disk is full")
        await super().finish_message(message_id, **values)

    async def checkpoint_message(self, message_id: int, content: str) -> None:
        self.checkpoints += 1
        if self.refusing:
            raise StorageFailed("the disk is full")
        await super().checkpoint_message(message_id, content)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Refusing]:
    opened = await Refusing.open(str(tmp_path / "chat.db"))
    yield opened
    await opened.close()


async def reply(store: Store) -> int:
    conversation = await store.create_conversation("local")
    _, message = await store.start_turn(conversation.id, "hi", metadata={})
    return message.id


def row(text: str = "all of it") -> dict[str, Any]:
    return {"status": "completed", "content": text, "metadata": {"finish_reason": "stop"}, "last_event_id": 3}


async def stored(store: Store, message_id: int) -> tuple[str, str]:
    message = await store.get_message("local", message_id)
    assert message is not None
    return message.status, message.content


async def test_a_refused_final_write_is_tried_again_until_it_goes_through(store: Refusing) -> None:
    keeper = Keeper(store, max_pending=1)
    message_id = await reply(store)
    refused: list[int] = []
    finishing = asyncio.create_task(
        keeper.finish(message_id, row(), refused=lambda: refused.append(keeper.pending))
    )
    await until(lambda: store.finishes >= 3, what="a few tries")
    assert refused == [1] and keeper.full
    store.refusing = False
    assert await finishing is None
    assert await stored(store, message_id) == ("completed", "all of it")
    assert keeper.pending == 0 and not keeper.full


async def test_giving_up_tries_once_more_then_says_what_was_lost(
    store: Refusing, caplog: pytest.LogCaptureFixture
) -> None:
    keeper = Keeper(store)
    message_id = await reply(store)
    finishing = asyncio.create_task(keeper.finish(message_id, row(), refused=lambda: None))
    await until(lambda: keeper.pending == 1, what="the write to wait")
    tries = store.finishes
    with caplog.at_level(logging.ERROR, logger="sidechat.keeping"):
        keeper.give_up()
        assert await finishing == "the disk is full"
    assert store.finishes == tries + 1
    assert (
        f"LOST the end of message {message_id} (completed, 9 characters of text): the disk is full"
        in caplog.text
    )
    assert await stored(store, message_id) == ("streaming", "")


async def test_a_checkpoint_comes_once_enough_new_text_arrived(store: Refusing) -> None:
    store.refusing = False
    keeper = Keeper(store, checkpoint_seconds=3600, checkpoint_chars=5)
    message_id = await reply(store)
    text = ["hel"]
    checkpoints = keeper.checkpoints(message_id, lambda: "".join(text))
    assert checkpoints is not None
    checkpoints.added(3)
    text.append("lo!")
    checkpoints.added(3)
    await checkpoints.close()  # waits for the save under way
    assert await stored(store, message_id) == ("streaming", "hello!")


async def test_a_checkpoint_comes_when_the_interval_is_over(store: Refusing) -> None:
    store.refusing = False
    keeper = Keeper(store, checkpoint_seconds=0.01, checkpoint_chars=10**6)
    message_id = await reply(store)
    checkpoints = keeper.checkpoints(message_id, lambda: "a little")
    assert checkpoints is not None
    checkpoints.added(8)
    await until(lambda: store.checkpoints == 1, what="the timed checkpoint")
    await checkpoints.close()
    assert await stored(store, message_id) == ("streaming", "a little")


async def test_a_refused_checkpoint_is_not_tried_again_at_every_token(store: Refusing) -> None:
    keeper = Keeper(store, checkpoint_seconds=3600, checkpoint_chars=1)
    message_id = await reply(store)
    checkpoints = keeper.checkpoints(message_id, lambda: "text")
    assert checkpoints is not None
    checkpoints.added(4)
    await until(lambda: store.checkpoints == 1, what="the refused checkpoint")  # refused in one step
    for _ in range(100):
        checkpoints.added(4)
    assert store.checkpoints == 1  # the next try waits for the interval
    await checkpoints.close()


async def test_no_checkpoint_is_written_after_the_reply_ended(store: Refusing) -> None:
    keeper = Keeper(store, checkpoint_seconds=0.01, checkpoint_chars=1)
    message_id = await reply(store)
    checkpoints = keeper.checkpoints(message_id, lambda: "text")
    assert checkpoints is not None
    checkpoints.added(4)
    await until(lambda: store.checkpoints == 1, what="the refused checkpoint")
    await checkpoints.close()
    store.refusing = False
    await asyncio.sleep(0.05)  # five intervals: any save still armed would have come by now
    assert store.checkpoints == 1
    assert await stored(store, message_id) == ("streaming", "")


async def test_checkpoints_are_off_with_no_interval(store: Refusing) -> None:
    assert Keeper(store, checkpoint_seconds=0).checkpoints(1, lambda: "") is None
