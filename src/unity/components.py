"""The long-lived parts of a running Unity, built in dependency order.

Components are passed to each other through constructor arguments; nothing is a
module-level singleton. ``create_app`` builds them in its lifespan; the CLI reuses
:func:`build_components` for one-off work (``unity plugins run``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from unity import __version__
from unity.auth.audit import AuditService
from unity.auth.service import KeyService, TenantService
from unity.collection.health import HealthPolicy
from unity.collection.pipeline import Pipeline
from unity.collection.scheduler import CollectionScheduler
from unity.collection.service import CollectionService
from unity.config import Settings
from unity.core.cache import Cache, CacheTTL, create_cache
from unity.core.clock import Clock, SystemClock
from unity.core.db import Database
from unity.core.events import EventBus, create_event_bus
from unity.core.migrations import upgrade
from unity.errors import DatabaseError
from unity.live.hub import LiveHub
from unity.live.streams import StreamHub
from unity.metrics.service import MetricsService, SeriesService
from unity.metrics.store import MetricStore, create_store
from unity.metrics.writer import BatchWriter
from unity.plugins.registry import PluginRegistry
from unity.plugins.service import PluginCatalog, PluginService
from unity.runs.executor import RunEngine
from unity.runs.schedule import TaskScheduler
from unity.runs.service import RunService, TaskService
from unity.webhooks.crypto import load_secret_box
from unity.webhooks.dispatcher import WebhookDispatcher
from unity.webhooks.recorder import Recorder
from unity.webhooks.sender import Sender
from unity.webhooks.service import WebhookService
from unity.webhooks.urls import UrlPolicy

#: How often the scheduler prunes audit rows past their retention.
AUDIT_PRUNE_INTERVAL_S = 3600.0


@dataclass(slots=True)
class Components:
    """Every long-lived part of a running Unity."""

    settings: Settings
    clock: Clock
    database: Database
    registry: PluginRegistry
    plugins: PluginService
    store: MetricStore
    writer: BatchWriter
    cache: Cache
    http: httpx.AsyncClient
    pipeline: Pipeline
    scheduler: CollectionScheduler | None
    catalog: PluginCatalog
    collection: CollectionService
    metrics: MetricsService
    bus: EventBus
    hub: LiveHub
    streams: StreamHub
    """``/ws/tasks``, ``/ws/runs`` and ``/ws/stream``."""
    keys: KeyService
    tenants: TenantService
    audit: AuditService
    admin_key: str | None
    """The admin key created at this start (first start only), to print once."""
    webhooks: WebhookService
    webhook_dispatcher: WebhookDispatcher
    engine: RunEngine
    """Moves runs through plan → approval → apply."""
    tasks: TaskService
    runs: RunService
    task_scheduler: TaskScheduler | None
    """Creates the runs of scheduled tasks (where this process schedules)."""
    series: SeriesService
    """Every series a tenant may read (``/api/metrics``)."""


async def build_components(
    settings: Settings,
    *,
    clock: Clock | None = None,
    registry: PluginRegistry | None = None,
    with_scheduler: bool | None = None,
) -> Components:
    """Open the database (migrating it), discover plugins and start the writer (and scheduler).

    ``registry`` defaults to a fresh discovery of built-ins and entry points.
    """
    clock = clock or SystemClock()
    database = Database(settings.effective_database_url)
    try:
        await database.ping()
        await upgrade(database)
    except DatabaseError:
        await database.dispose()
        raise
    if registry is None:
        registry = PluginRegistry(trusted=settings.trusted_plugins)
        registry.discover()
    plugins = PluginService(database=database, registry=registry, clock=clock)
    await plugins.sync_catalog(autoenable=settings.autoenable_plugins)
    store = create_store(database)
    await store.setup()
    writer = BatchWriter(
        store,
        flush_interval_s=settings.writer_flush_interval_s,
        max_batch=settings.writer_max_batch,
        max_pending=settings.writer_max_pending,
        clock=clock,
    )
    await writer.start()
    cache = create_cache(settings)
    bus = create_event_bus(settings, history_size=settings.event_history_size)
    await bus.start()
    webhooks, webhook_dispatcher = build_webhooks(settings, database, bus, clock)
    await webhook_dispatcher.start()

    async def publish(event_type: str, data: dict[str, Any]) -> None:
        await bus.publish(event_type, data, tenant_id=data.get("tenant_id"))

    http = httpx.AsyncClient(
        headers={"user-agent": f"Unity/{__version__}"}, timeout=httpx.Timeout(10.0)
    )
    keys = KeyService(
        database=database,
        clock=clock,
        publish=publish,
        cache_ttl_s=settings.key_cache_ttl_s,
        flush_interval_s=settings.key_usage_flush_interval_s,
    )
    await keys.start()
    audit = AuditService(
        database=database,
        clock=clock,
        retention_days=settings.audit_retention_days,
        flush_interval_s=settings.audit_flush_interval_s,
    )
    await audit.start()
    admin_key = await keys.ensure_admin_key(settings.data_dir)
    policy = HealthPolicy(
        degraded_after=settings.degraded_after_errors,
        failing_after=settings.failing_after_errors,
        stale_after_intervals=settings.stale_after_intervals,
    )
    pipeline = Pipeline(
        database=database,
        registry=registry,
        writer=writer,
        cache=cache,
        clock=clock,
        http=http,
        policy=policy,
        default_timeout_s=settings.execution_timeout_s,
        publish=publish,
    )
    if with_scheduler is None:
        with_scheduler = settings.role in ("all", "scheduler")
    scheduler = None
    if with_scheduler:
        scheduler = CollectionScheduler(
            pipeline=pipeline,
            plugins=plugins,
            database=database,
            cache=cache,
            clock=clock,
            policy=policy,
            stale_check_interval_s=settings.stale_check_interval_s,
            spread_first_runs=settings.scheduler_jitter,
            publish=publish,
            maintenance=[("unity:audit-prune", AUDIT_PRUNE_INTERVAL_S, audit.prune_expired)],
        )
        plugins.on_instance_changed = scheduler.sync_instance
        await scheduler.start()
    streams = StreamHub(
        bus=bus,
        clock=clock,
        heartbeat_s=settings.ws_heartbeat_s,
        queue_size=settings.ws_queue_size,
        authenticate=keys.authenticate,
    )
    await streams.start()
    engine = RunEngine(
        database=database,
        registry=registry,
        bus=bus,
        writer=writer,
        http=http,
        clock=clock,
        data_dir=settings.data_dir,
        execute=with_scheduler,
        check_interval_s=settings.run_check_interval_s,
        shutdown_grace_s=settings.run_shutdown_grace_s,
    )
    await engine.start()
    task_scheduler = None
    if with_scheduler:
        task_scheduler = TaskScheduler(database=database, engine=engine)
        await task_scheduler.start()
    tasks = TaskService(
        database=database,
        registry=registry,
        clock=clock,
        on_change=task_scheduler.sync if task_scheduler is not None else None,
    )
    ttl = CacheTTL.from_settings(settings)
    return Components(
        settings=settings,
        clock=clock,
        database=database,
        registry=registry,
        plugins=plugins,
        store=store,
        writer=writer,
        cache=cache,
        http=http,
        pipeline=pipeline,
        scheduler=scheduler,
        catalog=PluginCatalog(database=database, registry=registry, cache=cache, ttl=ttl),
        collection=CollectionService(
            database=database, store=store, cache=cache, ttl=ttl, clock=clock
        ),
        metrics=MetricsService(store=store, cache=cache, ttl=ttl, clock=clock),
        bus=bus,
        hub=LiveHub(
            bus=bus,
            clock=clock,
            heartbeat_s=settings.ws_heartbeat_s,
            queue_size=settings.ws_queue_size,
            authenticate=keys.authenticate,
        ),
        streams=streams,
        keys=keys,
        tenants=TenantService(database=database, clock=clock),
        audit=audit,
        admin_key=admin_key,
        webhooks=webhooks,
        webhook_dispatcher=webhook_dispatcher,
        engine=engine,
        tasks=tasks,
        runs=RunService(database=database, engine=engine, store=store, clock=clock),
        task_scheduler=task_scheduler,
        series=SeriesService(database=database, store=store),
    )


def build_webhooks(
    settings: Settings, database: Database, bus: EventBus, clock: Clock
) -> tuple[WebhookService, WebhookDispatcher]:
    """The webhook service and its dispatcher (not started)."""
    service = WebhookService(
        database=database,
        clock=clock,
        box=load_secret_box(settings.data_dir, settings.webhook_secret_key),
        policy=UrlPolicy.from_settings(
            settings.webhook_allow_networks, settings.webhook_deny_networks
        ),
        rotation_grace_s=settings.webhook_rotation_grace_s,
    )
    recorder = Recorder(
        database=database,
        service=service,
        bus=bus,
        clock=clock,
        retry_schedule_s=settings.webhook_retry_schedule_s,
        disable_after_s=settings.webhook_disable_after_s,
    )
    dispatcher = WebhookDispatcher(
        database=database,
        bus=bus,
        service=service,
        sender=Sender(
            clock=clock,
            policy=service.policy,
            timeout_s=settings.webhook_timeout_s,
            max_connections=settings.webhook_concurrency,
        ),
        recorder=recorder,
        clock=clock,
        concurrency=settings.webhook_concurrency,
        poll_interval_s=settings.webhook_poll_interval_s,
        lease_s=settings.webhook_lease_s,
        deliver=settings.webhook_dispatch,
        resume=settings.redis_url is not None,
    )
    return service, dispatcher


async def close_components(components: Components) -> None:
    """Stop in reverse order; the writer flushes everything it accepted before closing."""
    if components.scheduler is not None:
        await components.scheduler.shutdown()
    if components.task_scheduler is not None:
        await components.task_scheduler.shutdown()
    await components.engine.stop()
    await components.pipeline.close()
    await components.writer.stop()
    await components.audit.stop()
    await components.keys.stop()
    await components.http.aclose()
    await components.webhook_dispatcher.stop()
    await components.streams.stop()
    await components.bus.close()
    await components.cache.close()
    await components.store.close()
    await components.database.dispose()
