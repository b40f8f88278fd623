"""What a running sidechat holds, opened in order at start-up and closed in reverse.

The lifespan (`chat.app`) owns one `Services`: the store, the broker, the running
generations, the providers and the one upstream HTTP client they share. Nothing
else opens any of them, so a test or a script can run the whole service by
entering `open_services(settings)`. With SIDECHAT_STORE=none the store is
`chat.store_none.MemoryStore`, and no database is opened at all.
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
from .feeds import Feeds, live_feeds
from .keeping import Keeper
from .limits import Limits, live_limits
from .prices import load_prices
from .providers import ProviderInfo, build_providers
from .providers.deadlines import Timeouts
from .readiness import Readiness
from .redis_services import cancels_heard, lease_held, live_broker
from .running import Generations
from .single import sole_process
from .store import StorageFailed, Store
from .store_none import LINGER_SECONDS, MemoryStore
from .stores import open_database, open_readiness, shown
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


async def open_store(settings: Settings, telemetry: Telemetry = NOTHING) -> Store:
    """The database's store, with the replies a previous process left running marked
    interrupted; with SIDECHAT_STORE=none, a store that keeps nothing and opens no file.
    With Redis, other processes may be running those replies: only the orphans are ended,
    by the reaper (`chat.orphans`), once it can tell which are."""
    if not settings.stored:
        log.info(
            "storage is off (SIDECHAT_STORE=none): nothing is stored; a reply can be resumed"
            " for %g seconds after it ends (SIDECHAT_REPLAY_SECONDS)",
            settings.replay_seconds,
        )
        return MemoryStore(keep_seconds=settings.replay_seconds + LINGER_SECONDS)
    store = await open_database(settings, telemetry)
    if settings.redis_url:
        return store
    try:
        interrupted = await store.interrupt_streaming(events.INTERRUPTED)
    except BaseException as exc:
        await store.close()
        if isinstance(exc, StorageFailed):
            raise StartupError(
                f"cannot write to the database {shown(settings.db)} (SIDECHAT_DB or --db): {exc}"
            ) from None
        raise
    if interrupted:
        log.warning("%d replies were cut off by the last stop; marked interrupted", interrupted)
    return store


@asynccontextmanager
async def open_services(settings: Settings, telemetry: Telemetry = NOTHING) -> AsyncIterator[Services]:
    """Everything the routes need; on the way out, running generations get the grace period."""
    async with sole_process(settings):
        async with _opened(settings, telemetry) as services:
            yield services


@asynccontextmanager
async def _opened(settings: Settings, telemetry: Telemetry) -> AsyncIterator[Services]:
    store = await open_store(settings, telemetry)
    try:
        timeouts = Timeouts(
            connect=settings.connect_timeout,
            first_token=settings.first_token_timeout,
            idle=settings.idle_timeout,
        )
        async with (
            upstream_client(timeouts, ca_bundle=settings.ca_bundle) as client,
            live_broker(settings) as broker,
            lease_held(settings, broker, store) as registry,  # dropped once generations ended
            live_limits(settings, broker) as limits,  # likewise: slots are given back as they end
            live_feeds(broker, settings) as feeds,
        ):
            keeper = Keeper(
                store,
                # Nothing to save a running reply's text to without a database.
                checkpoint_seconds=settings.checkpoint_seconds if settings.stored else 0.0,
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
                registry=registry,
            )
            providers = build_providers(settings, client, timeouts, telemetry)
            # With nothing stored there is no database to check: ready whenever it answers.
            readiness = await open_readiness(settings, store, keeper) if settings.stored else None
            try:
                async with cancels_heard(broker, generations):
                    yield Services(
                        settings,
                        store,
                        broker,
                        generations,
                        providers,
                        limits,
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
