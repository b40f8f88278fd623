"""What copying a topic to Redis costs sidechat per event: `python bench/redis_copy_cost.py`.

Calls `RedisBroker._write` (chat/redis_broker.py: one pipelined round trip per batch of
events) against a real redis-server, in batches of 1, 16 and 64 events, and prints this
process's CPU per event: the cost the `cpu` part of bench/scale.py sees per token in Redis
mode, without a relay around it. A batch of 1 is a token that came alone (tokens far apart);
larger batches are tokens that queued up while the previous write was in flight.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis_proc import RedisProcess  # noqa: E402

from chat.redis_broker import RedisBroker, open_redis  # noqa: E402
from chat.redis_keys import Keys  # noqa: E402

EVENT = b'id: 12\nevent: token\ndata: {"text": "w12 "}\n\n'


async def measure(url: str, events: int) -> None:
    redis = open_redis(url)
    broker = RedisBroker(redis, retention=60, keys=Keys("copy-cost:"))
    log = [EVENT] * events
    try:
        for batch in (1, 16, 64):
            cpu, wall = time.process_time(), time.perf_counter()
            for start in range(0, events, batch):  # from 0: the stream starts afresh each time
                await broker._write("copy-cost", log, start, start + batch, False)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(
                f"batch {batch:>2}: {cpu / events * 1e6:6.1f} µs CPU, {wall / events * 1e6:6.1f} µs wall per event"
            )
    finally:
        await redis.aclose()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sidechat-copy-cost-") as directory:
        server = RedisProcess(Path(directory), [])
        server.start()
        try:
            asyncio.run(measure(server.url, 64 * 300))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
