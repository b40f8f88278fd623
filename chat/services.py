"""What a running sidechat holds, opened in order at start-up and closed in reverse.

The lifespan (`chat.app`) owns one `Services`: the store, the broker, the running
generations, the providers and the one upstream HTTP client they share. Nothing
else opens any of them, so a test or a script can run the whole service by
entering `open_services(settings)`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from . import events
from .broker import Broker
from .config import Settings
from .errors import StartupError
from .feeds import Feeds
from .keeping import Keeper
from .limits import Limits
from .prices import load_prices
from .providers import ProviderInfo, build_providers
from .providers.deadlines import Timeouts
from .readiness import Readiness
from .running import Generations
from .store import StorageFailed, Store
from .telemetry import NOTHING, Telemetry
from .transport import upstream_client

log = logging.getLogger("sidechat")


@dataclass(slots=True)
class Services:
    settings: Settings
    store: Store
    broker: Broker
    generations: Generations
    providers: dict[str, ProviderInfo]
    limits: Limits
    feeds: Feeds
    readiness: Readiness | None = None
    telemetry: Telemetry = NOTHING


@asynccontextmanager
async def open_services(settings: Settings, telemetry: Telemetry = NOTHING) -> AsyncIterator[Services]:
    """Everything the routes need; on the way out, running generations get the grace period."""
    store = await Store.open(settings.db, busy_timeout=settings.db_busy_timeout, telemetry=telemetry)
    try:
        try:
            interrupted = await store.interrupt_streaming(events.INTERRUPTED)
        except StorageFailed as exc:
            raise StartupError(
                f"cannot write to the database {settings.db} (SIDECHAT_DB or --db): {exc}"
            ) from None
        if interrupted:
            log.warning("%d replies were cut off by the last stop; marked interrupted", interrupted)
        timeouts = Timeouts(
            connect=settings.connect_timeout,
            first_token=settings.first_token_timeout,
            idle=settings.idle_timeout,
        )
        async with upstream_client(timeouts, ca_bundle=settings.ca_bundle) as client:
            broker = Broker(retention=settings.replay_seconds)
            feeds = Feeds(broker, settings)
            keeper = Keeper(
                store,
                checkpoint_seconds=settings.checkpoint_seconds,
                checkpoint_chars=settings.checkpoint_bytes,
                max_pending=settings.max_pending_writes,
            )
            generations = Generations(
                broker,
                keeper,
                max_reply_chars=settings.max_reply_chars,
                watched=feeds.watched,
                telemetry=telemetry,
                prices=load_prices(settings.prices),  # checked: a bad SIDECHAT_PRICES stops start-up
            )
            providers = build_providers(settings, client, timeouts, telemetry)
            readiness = await Readiness.open(settings.db, keeper)
            try:
                yield Services(
                    settings,
                    store,
                    broker,
                    generations,
                    providers,
                    Limits(settings),
                    feeds,
                    readiness,
                    telemetry,
                )
            finally:
                try:
                    await generations.begin_shutdown(settings.shutdown_grace_seconds)
                finally:
                    if readiness is not None:
                        await readiness.close()
    finally:
        await store.close()
