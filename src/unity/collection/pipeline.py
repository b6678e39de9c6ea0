"""One execution of one plugin instance, from ``collect`` to stored samples and recorded status.

    collect (timeout, retries) -> validate -> batch writer (awaits commit)
      -> plugin_executions row + plugin_status update (one transaction)
      -> cache invalidation -> published events

A plugin that raises, hangs or returns garbage produces a failed or timed-out execution;
the pipeline itself never raises for a plugin's fault, so the scheduler keeps going.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import httpx
import orjson
import structlog
from pydantic import ValidationError
from sqlalchemy import select

from unity.collection.cache_keys import plugin_keys
from unity.collection.health import Health, HealthPolicy
from unity.collection.models import PluginExecution, PluginStatus
from unity.core.cache import Cache
from unity.core.clock import Clock, to_ms
from unity.core.db import Database
from unity.errors import CollectionError, MalformedOutput
from unity.metrics.store.abc import SeriesKey, SnapshotWrite
from unity.metrics.writer import BatchWriter, PendingSample
from unity.plugins.registry import PluginRegistry
from unity.plugins.sdk import Collected, Collector, Context, PluginConfig, Sample
from unity.plugins.service import InstanceRef

ExecutionStatus = Literal["success", "failed", "timeout"]
Publisher = Callable[[str, dict[str, Any]], Awaitable[None]]

log = structlog.stdlib.get_logger("unity.collection")


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """What happened in one execution; also the payload of the events it publishes."""

    execution_id: uuid.UUID
    instance: InstanceRef
    status: ExecutionStatus
    started_at: datetime
    completed_at: datetime
    duration_ms: float
    attempts: int
    samples: Sequence[Sample] = ()
    snapshot: dict[str, Any] | None = None
    error: str | None = None
    health_before: Health = Health.UNKNOWN
    health_after: Health = Health.UNKNOWN

    @property
    def success(self) -> bool:
        return self.status == "success"

    @property
    def metrics_count(self) -> int:
        return len(self.samples)


@dataclass(slots=True)
class _Attempt:
    status: ExecutionStatus
    collected: Collected | None = None
    error: str | None = None


@dataclass(slots=True)
class PipelineStats:
    """Counters exposed on ``/metrics``."""

    executions: dict[str, int] = field(
        default_factory=lambda: {"success": 0, "failed": 0, "timeout": 0}
    )
    samples: int = 0


class Pipeline:
    """Runs plugin instances and records everything about each run."""

    def __init__(
        self,
        *,
        database: Database,
        registry: PluginRegistry,
        writer: BatchWriter,
        cache: Cache,
        clock: Clock,
        http: httpx.AsyncClient,
        policy: HealthPolicy,
        default_timeout_s: float = 30.0,
        publish: Publisher | None = None,
    ) -> None:
        self._db = database
        self._registry = registry
        self._writer = writer
        self._cache = cache
        self._clock = clock
        self._http = http
        self._policy = policy
        self._default_timeout_s = default_timeout_s
        self.publish = publish
        # One plugin object per instance, so stateful collectors (I/O rates) keep their state;
        # rebuilt when the instance's config changes.
        self._plugins: dict[uuid.UUID, tuple[str, Collector[Any]]] = {}
        self._retired: list[tuple[uuid.UUID, Collector[Any]]] = []
        self.stats = PipelineStats()

    async def execute(self, instance: InstanceRef) -> ExecutionResult:
        """Run ``instance`` once (with its retries) and record the outcome. Never raises for plugin faults."""
        started_at = self._clock.now()
        t0 = time.perf_counter()
        while self._retired:  # objects replaced by a config change: close them off the hot path
            await _close_plugin(*self._retired.pop())
        attempts = 0
        config: PluginConfig | None = None
        try:
            plugin, config = self._plugin_for(instance)
        except (CollectionError, ValidationError) as exc:
            attempt = _Attempt("failed", error=_describe(exc))
            attempts = 1
        else:
            attempt = _Attempt("failed", error="not run")
            for number in range(config.retries + 1):
                attempts = number + 1
                attempt = await self._attempt(plugin, config, instance, started_at)
                if attempt.status == "success" or number == config.retries:
                    break
                log.debug(
                    "retrying collection",
                    plugin_id=instance.plugin_id,
                    instance=instance.name,
                    attempt=attempts,
                    error=attempt.error,
                )
                await asyncio.sleep(config.retry_delay)

        samples: list[Sample] = []
        snapshot: dict[str, Any] | None = None
        if attempt.status == "success" and attempt.collected is not None:
            samples = attempt.collected.samples
            snapshot = attempt.collected.snapshot
            await self._store(instance, samples, snapshot, started_at)
        completed_at = self._clock.now()
        duration_ms = (time.perf_counter() - t0) * 1000
        result = await self._record(
            instance,
            status=attempt.status,
            started_at=started_at,
            completed_at=completed_at,
            duration_ms=duration_ms,
            attempts=attempts,
            samples=samples,
            snapshot=snapshot,
            error=attempt.error,
        )
        self.stats.executions[result.status] += 1
        self.stats.samples += len(samples)
        await self._announce(result)
        return result

    async def forget(self, instance_id: uuid.UUID) -> None:
        """Close and drop the plugin object of an instance (it was removed or reconfigured)."""
        cached = self._plugins.pop(instance_id, None)
        if cached is not None:
            await _close_plugin(instance_id, cached[1])

    async def close(self) -> None:
        """Close every plugin object (Unity is stopping)."""
        for instance_id in list(self._plugins):
            await self.forget(instance_id)

    def _plugin_for(self, instance: InstanceRef) -> tuple[Collector[Any], PluginConfig]:
        spec = self._registry.get(instance.plugin_id)
        if spec.cls is None:
            raise CollectionError(f"plugin {instance.plugin_id} is broken: {spec.error}")
        if not issubclass(spec.cls, Collector):
            raise CollectionError(f"plugin {instance.plugin_id} is not a collector")
        config = spec.cls.config_model.model_validate(instance.config)
        fingerprint = hashlib.sha256(
            orjson.dumps(instance.config, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        cached = self._plugins.get(instance.id)
        if cached is None or cached[0] != fingerprint:
            if cached is not None:
                self._retired.append((instance.id, cached[1]))
            cached = (fingerprint, spec.cls())
            self._plugins[instance.id] = cached
        return cached[1], config

    async def _attempt(
        self,
        plugin: Collector[Any],
        config: PluginConfig,
        instance: InstanceRef,
        started_at: datetime,
    ) -> _Attempt:
        ctx: Context[Any] = Context(
            config=config,
            http=self._http,
            clock=self._clock,
            log=log.bind(plugin_id=instance.plugin_id, instance=instance.name),
            plugin_id=instance.plugin_id,
            instance_id=str(instance.id),
            instance_name=instance.name,
        )
        timeout = config.timeout or self._default_timeout_s
        try:
            collected = await asyncio.wait_for(plugin.collect(ctx), timeout=timeout)
            _validate(collected)
        except TimeoutError:
            return _Attempt("timeout", error=f"timed out after {timeout:g} s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a plugin's fault, whatever it is, is recorded, not raised
            return _Attempt("failed", error=_describe(exc))
        return _Attempt("success", collected=collected)

    async def _store(
        self,
        instance: InstanceRef,
        samples: Sequence[Sample],
        snapshot: dict[str, Any] | None,
        started_at: datetime,
    ) -> None:
        default_ts = to_ms(started_at)
        source_id = str(instance.id)
        pending = [
            PendingSample(
                SeriesKey.of(
                    s.name,
                    source_kind="instance",
                    source_id=source_id,
                    plugin_id=instance.plugin_id,
                    labels=s.labels,
                    unit=self._unit(instance.plugin_id, s.name),
                ),
                to_ms(s.ts) if s.ts is not None else default_ts,
                float(s.value),
            )
            for s in samples
        ]
        snap = (
            SnapshotWrite(instance.id, instance.plugin_id, started_at, snapshot)
            if snapshot is not None
            else None
        )
        if not pending and snap is None:
            return
        # Wait for the commit: an execution is "success" only once its data is durable.
        await await_commit(await self._writer.submit(pending, snap))

    def _unit(self, plugin_id: str, metric: str) -> str | None:
        spec = self._registry.get(plugin_id)
        if spec.cls is None or not issubclass(spec.cls, Collector):
            return None
        for described in spec.cls.metrics:
            if described.name == metric:
                return described.unit or None
        return None

    async def _record(
        self,
        instance: InstanceRef,
        *,
        status: ExecutionStatus,
        started_at: datetime,
        completed_at: datetime,
        duration_ms: float,
        attempts: int,
        samples: Sequence[Sample],
        snapshot: dict[str, Any] | None,
        error: str | None,
    ) -> ExecutionResult:
        execution_id = uuid.uuid4()
        async with self._db.session() as session:
            session.add(
                PluginExecution(
                    id=execution_id,
                    instance_id=instance.id,
                    plugin_id=instance.plugin_id,
                    started_at=started_at,
                    completed_at=completed_at,
                    status=status,
                    metrics_count=len(samples),
                    duration_ms=duration_ms,
                    attempts=attempts,
                    error=error,
                )
            )
            row = await session.scalar(
                select(PluginStatus)
                .where(PluginStatus.instance_id == instance.id)
                .with_for_update()
            )
            if row is None:
                row = PluginStatus(
                    instance_id=instance.id,
                    health=Health.UNKNOWN,
                    consecutive_errors=0,
                    success_count=0,
                    error_count=0,
                )
                session.add(row)
            before = Health(row.health)
            row.last_run = completed_at
            row.last_duration_ms = duration_ms
            if status == "success":
                row.consecutive_errors = 0
                row.success_count += 1
                row.last_success = completed_at
                if samples:
                    row.last_sample_at = completed_at
                after = self._policy.after_success(before, produced_samples=bool(samples))
            else:
                row.consecutive_errors += 1
                row.error_count += 1
                row.last_error = error
                row.last_error_at = completed_at
                after = self._policy.after_failure(before, row.consecutive_errors)
            if after is not before:
                row.health = after
                row.health_changed_at = completed_at
        await self._cache.delete(*plugin_keys(instance.plugin_id, instance.tenant_id))
        if after is not before:
            _log_transition(instance, before, after, error)
        return ExecutionResult(
            execution_id=execution_id,
            instance=instance,
            status=status,
            started_at=started_at,
            completed_at=completed_at,
            duration_ms=duration_ms,
            attempts=attempts,
            samples=samples,
            snapshot=snapshot,
            error=error,
            health_before=before,
            health_after=after,
        )

    async def _announce(self, result: ExecutionResult) -> None:
        if self.publish is None:
            return
        base = {
            "plugin_id": result.instance.plugin_id,
            "instance_id": str(result.instance.id),
            "tenant_id": result.instance.tenant_id,
        }
        try:
            if result.success:
                await self.publish(
                    "metrics.updated",
                    {
                        **base,
                        "timestamp": result.started_at.isoformat(),
                        "metrics": metrics_payload(result.samples),
                    },
                )
            await self.publish(
                "execution.completed" if result.success else "execution.failed",
                {
                    **base,
                    "execution": {
                        "id": str(result.execution_id),
                        "success": result.success,
                        "status": result.status,
                        "duration_ms": round(result.duration_ms, 3),
                        "metrics_count": result.metrics_count,
                        "error": result.error,
                        "started_at": result.started_at.isoformat(),
                    },
                },
            )
            if result.health_after is not result.health_before:
                await self.publish(
                    "plugin.health_changed",
                    {**base, "from": result.health_before.value, "to": result.health_after.value},
                )
        except Exception:  # a broken subscriber must not fail an execution that is already stored
            log.exception("publishing execution events failed", plugin_id=result.instance.plugin_id)


def metrics_payload(samples: Sequence[Sample]) -> dict[str, Any]:
    """Samples as ``{name: value}``, or ``{name: [{labels, value}, …]}`` for labelled metrics."""
    out: dict[str, Any] = {}
    for s in samples:
        if not s.labels:
            out[s.name] = s.value
            continue
        existing = out.get(s.name)
        entry = {"labels": dict(s.labels), "value": s.value}
        if isinstance(existing, list):
            existing.append(entry)
        else:
            out[s.name] = [entry]
    return out


async def await_commit(future: asyncio.Future[int]) -> int:
    """Wait for the writer to commit; shielded so a cancelled execution keeps its data."""
    return await asyncio.shield(future)


def _validate(collected: object) -> None:
    if not isinstance(collected, Collected):
        raise MalformedOutput(f"collect() returned {type(collected).__name__}, expected Collected")
    if not isinstance(collected.samples, list):
        raise MalformedOutput("Collected.samples must be a list of Sample")
    for sample in collected.samples:
        if not isinstance(sample, Sample):
            raise MalformedOutput(
                f"Collected.samples holds a {type(sample).__name__}, not a Sample"
            )
        problem = sample.problem()
        if problem:
            raise MalformedOutput(problem)
    if collected.snapshot is not None:
        if not isinstance(collected.snapshot, dict):
            raise MalformedOutput("Collected.snapshot must be a dict or None")
        # Normalise to plain JSON now (datetimes and UUIDs become strings), so nothing the
        # plugin returned can fail later inside the batch writer's transaction.
        try:
            collected.snapshot = orjson.loads(orjson.dumps(collected.snapshot))
        except TypeError as exc:
            raise MalformedOutput(f"snapshot is not JSON-serialisable: {exc}") from exc


async def _close_plugin(instance_id: uuid.UUID, plugin: Collector[Any]) -> None:
    try:
        await plugin.close()
    except Exception:  # a plugin's close() failing must not stop Unity
        log.exception("plugin close() failed", instance_id=str(instance_id))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CollectionError | MalformedOutput):
        return exc.detail
    if isinstance(exc, ValidationError):
        return f"invalid config: {exc.error_count()} error(s): " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
    message = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {message}"


def _log_transition(
    instance: InstanceRef, before: Health, after: Health, error: str | None
) -> None:
    # Logged once per transition, not on every failure (see STYLE: Home Assistant's pollers).
    event_log = log.bind(plugin_id=instance.plugin_id, instance=instance.name)
    if after in (Health.DEGRADED, Health.FAILING):
        event_log.warning(
            "plugin instance unhealthy", health=after.value, previous=before.value, error=error
        )
    elif before in (Health.DEGRADED, Health.FAILING, Health.STALE):
        event_log.info("plugin instance recovered", health=after.value, previous=before.value)
    else:
        event_log.info("plugin instance health", health=after.value, previous=before.value)
