"""Plugin catalog and instances: keep the ``plugins`` table in step with discovery, enable,
disable and configure plugins. No HTTP here; the API and the CLI call these functions.

Scheduling is not this module's business: every change that affects what runs is reported
through ``on_instance_changed`` (wired by ``create_app`` to the scheduler).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from unity.auth.principal import DEFAULT_TENANT
from unity.collection.cache_keys import categories_key, dashboard_keys, detail_key, plugin_keys
from unity.collection.health import Health, worst
from unity.collection.models import PluginStatus
from unity.core.cache import Cache, CacheTTL
from unity.core.cache.abc import decode
from unity.core.clock import Clock
from unity.core.db import Database
from unity.errors import ConflictError, NotFoundError, ValidationFailed
from unity.plugins.models import Plugin, PluginInstance
from unity.plugins.registry import PluginRegistry, PluginSpec
from unity.plugins.schemas import (
    CategoryOut,
    InstanceOut,
    MetricInfo,
    PluginDetail,
    PluginSummary,
    StatusOut,
)
from unity.plugins.sdk import PluginConfig

DEFAULT_INSTANCE = "default"
#: Longest time a tenant's cached plugin list lives (less when ``cache_ttl_status_s`` is).
LIST_TTL_S = 5.0
InstanceListener = Callable[[uuid.UUID], Awaitable[None]]

log = structlog.stdlib.get_logger("unity.plugins")


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """Everything needed to run an instance, detached from any database session."""

    id: uuid.UUID
    plugin_id: str
    name: str
    tenant_id: str
    config: dict[str, Any]
    interval_s: int


def _ref(instance: PluginInstance, plugin_id: str) -> InstanceRef:
    return InstanceRef(
        id=instance.id,
        plugin_id=plugin_id,
        name=instance.name,
        tenant_id=instance.tenant_id,
        config=dict(instance.config),
        interval_s=instance.interval_s,
    )


def validate_config(spec: PluginSpec, config: dict[str, Any]) -> PluginConfig:
    """Validate ``config`` against the plugin's model; 422 with the failing fields otherwise."""
    if spec.cls is None:
        raise ConflictError(f"plugin {spec.plugin_id} is broken: {spec.error}")
    try:
        return spec.cls.config_model.model_validate(config)
    except ValidationError as exc:
        errors = [
            {"loc": ["config", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        raise ValidationFailed(
            f"invalid config for plugin {spec.plugin_id}", errors=errors
        ) from exc


class PluginService:
    """The plugin catalog in the database and the instances that run."""

    def __init__(
        self,
        *,
        database: Database,
        registry: PluginRegistry,
        clock: Clock,
        on_instance_changed: InstanceListener | None = None,
    ) -> None:
        self._db = database
        self._registry = registry
        self._clock = clock
        self.on_instance_changed = on_instance_changed

    async def sync_catalog(self, *, autoenable: Collection[str] = ()) -> None:
        """Upsert a row per discovered plugin; on a new database, enable ``autoenable`` ones."""
        now = self._clock.now()
        async with self._db.session() as session:
            existing = {p.plugin_id: p for p in await session.scalars(select(Plugin))}
            first_start = not existing
            for spec in self._registry.specs():
                row = existing.get(spec.plugin_id)
                manifest = spec.manifest
                values: dict[str, Any] = {
                    "name": manifest.name if manifest else spec.plugin_id,
                    "version": manifest.version if manifest else "0",
                    "kind": manifest.kind if manifest else "collector",
                    "category": manifest.category if manifest else "broken",
                    "description": manifest.description if manifest else "",
                    "source": spec.source,
                    "verified": spec.verified,
                    "manifest": manifest.model_dump(mode="json") if manifest else {},
                    "config_schema": spec.cls.config_schema() if spec.cls else {},
                    "broken_error": spec.error,
                }
                if row is None:
                    row = Plugin(plugin_id=spec.plugin_id, created_at=now, **values)
                    session.add(row)
                else:
                    for key, value in values.items():
                        setattr(row, key, value)
                row.updated_at = now
        if first_start:
            for plugin_id in autoenable:
                await self._autoenable(plugin_id)

    async def _autoenable(self, plugin_id: str) -> None:
        # A plugin listed in autoenable_plugins that is unknown, broken or needs config
        # (http_check needs a url) is skipped with a warning: start-up must not fail on it.
        try:
            spec = self._registry.get(plugin_id)
            if spec.broken:
                raise ConflictError(f"plugin {plugin_id} is broken: {spec.error}")
            await self.set_enabled(plugin_id, tenant_id=DEFAULT_TENANT, enabled=True)
        except (NotFoundError, ConflictError, ValidationFailed) as exc:
            log.warning(
                "not enabling plugin at first start", plugin_id=plugin_id, reason=exc.detail
            )

    async def set_enabled(
        self,
        plugin_id: str,
        *,
        tenant_id: str,
        enabled: bool,
        config: dict[str, Any] | None = None,
    ) -> InstanceRef:
        """Enable or disable a plugin for a tenant: its default instance in that tenant.

        Enabling creates the instance when needed. ``config`` (validated against the
        plugin's model; 422 otherwise) replaces the instance's config. Either takes effect
        at once through ``on_instance_changed``.
        """
        spec = self._registry.get(plugin_id)
        if enabled and spec.broken:
            raise ConflictError(f"plugin {plugin_id} is broken and cannot be enabled: {spec.error}")
        if enabled and spec.manifest is not None and spec.manifest.kind == "action":
            raise ConflictError(
                f"plugin {plugin_id} is an action: it is not scheduled, it runs through tasks "
                "(POST /api/tasks/ with its id as the action)"
            )
        now = self._clock.now()
        async with self._db.session() as session:
            plugin = await self._plugin_row(session, plugin_id)
            instance = await session.scalar(
                select(PluginInstance).where(
                    PluginInstance.plugin_pk == plugin.id,
                    PluginInstance.tenant_id == tenant_id,
                    PluginInstance.name == DEFAULT_INSTANCE,
                )
            )
            current = dict(instance.config) if instance is not None else {}
            new_config = config if config is not None else current
            validated = (
                validate_config(spec, new_config) if (enabled or config is not None) else None
            )
            if instance is None:
                instance = PluginInstance(
                    plugin_pk=plugin.id,
                    tenant_id=tenant_id,
                    name=DEFAULT_INSTANCE,
                    created_at=now,
                )
                session.add(instance)
            instance.enabled = enabled
            if validated is not None:
                instance.config = validated.model_dump(mode="json", exclude_unset=True)
                instance.interval_s = validated.collection_interval
            elif instance.interval_s is None:
                instance.interval_s = PluginConfig().collection_interval
            if instance.config is None:
                instance.config = {}
            instance.updated_at = now
            await session.flush()
            ref = _ref(instance, plugin_id)
        await self._notify(ref.id)
        log.info(
            "plugin enabled" if enabled else "plugin disabled",
            plugin_id=plugin_id,
            tenant_id=tenant_id,
        )
        return ref

    async def runnable_instances(self) -> list[InstanceRef]:
        """Every enabled instance of a working plugin, all tenants."""
        async with self._db.session() as session:
            rows = await session.execute(
                select(PluginInstance, Plugin.plugin_id)
                .join(Plugin, PluginInstance.plugin_pk == Plugin.id)
                .where(PluginInstance.enabled.is_(True))
            )
            refs = [_ref(instance, plugin_id) for instance, plugin_id in rows]
        return [r for r in refs if self._is_runnable(r.plugin_id)]

    async def instance(self, instance_id: uuid.UUID) -> tuple[InstanceRef, bool] | None:
        """The instance and whether it should run now (enabled, plugin not broken)."""
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(PluginInstance, Plugin.plugin_id)
                    .join(Plugin, PluginInstance.plugin_pk == Plugin.id)
                    .where(PluginInstance.id == instance_id)
                )
            ).first()
        if row is None:
            return None
        instance, plugin_id = row
        return _ref(instance, plugin_id), bool(instance.enabled and self._is_runnable(plugin_id))

    async def default_instance(
        self, plugin_id: str, tenant_id: str = DEFAULT_TENANT
    ) -> InstanceRef:
        """The plugin's default instance in ``tenant_id``, created (disabled) if missing."""
        spec = self._registry.get(plugin_id)
        if spec.broken:
            raise ConflictError(f"plugin {plugin_id} is broken: {spec.error}")
        if spec.manifest is not None and spec.manifest.kind == "action":
            raise ConflictError(f"plugin {plugin_id} is an action: it runs through tasks")
        now = self._clock.now()
        async with self._db.session() as session:
            plugin = await self._plugin_row(session, plugin_id)
            instance = await session.scalar(
                select(PluginInstance).where(
                    PluginInstance.plugin_pk == plugin.id,
                    PluginInstance.tenant_id == tenant_id,
                    PluginInstance.name == DEFAULT_INSTANCE,
                )
            )
            if instance is None:
                config = validate_config(spec, {})
                instance = PluginInstance(
                    plugin_pk=plugin.id,
                    tenant_id=tenant_id,
                    name=DEFAULT_INSTANCE,
                    enabled=False,
                    config={},
                    interval_s=config.collection_interval,
                    created_at=now,
                    updated_at=now,
                )
                session.add(instance)
                await session.flush()
            return _ref(instance, plugin_id)

    async def _plugin_row(self, session: AsyncSession, plugin_id: str) -> Plugin:
        plugin = await session.scalar(select(Plugin).where(Plugin.plugin_id == plugin_id))
        if plugin is None:
            raise NotFoundError(f"unknown plugin {plugin_id!r}")
        return plugin

    def _is_runnable(self, plugin_id: str) -> bool:
        try:
            spec = self._registry.get(plugin_id)
        except NotFoundError:  # a plugin row whose code disappeared
            return False
        # Actions run through tasks, never on a collection schedule.
        is_action = spec.manifest is not None and spec.manifest.kind == "action"
        return not spec.broken and not is_action

    async def _notify(self, instance_id: uuid.UUID) -> None:
        if self.on_instance_changed is not None:
            await self.on_instance_changed(instance_id)


class PluginCatalog:
    """Read side of the catalog for the API, as one tenant sees it (cached per tenant)."""

    def __init__(
        self, *, database: Database, registry: PluginRegistry, cache: Cache, ttl: CacheTTL
    ) -> None:
        self._db = database
        self._registry = registry
        self._cache = cache
        self._ttl = ttl

    async def list_plugins(
        self,
        *,
        tenant_id: str,
        enabled: bool | None = None,
        category: str | None = None,
        kind: str | None = None,
        skip: int = 0,
        limit: int = 10,
    ) -> tuple[list[PluginSummary], int]:
        """Plugins matching the filters, by id, and how many match."""
        page = await self.list_data(
            tenant_id=tenant_id,
            enabled=enabled,
            category=category,
            kind=kind,
            skip=skip,
            limit=limit,
        )
        return [PluginSummary.model_validate(p) for p in page["items"]], page["total"]

    async def list_data(
        self,
        *,
        tenant_id: str,
        enabled: bool | None = None,
        category: str | None = None,
        kind: str | None = None,
        skip: int = 0,
        limit: int = 10,
    ) -> dict[str, Any]:
        """A page of plugins as JSON values: ``{"items", "total", "skip", "limit"}``.

        Served from the tenant's cached list of every plugin (see :func:`list_key`), filtered
        and paged here: one cache read, no database, whatever the filters.
        """
        rows: list[dict[str, Any]] = await self._cache.get_or_set(
            list_key(tenant_id), min(self._ttl.status_s, LIST_TTL_S), lambda: self._list(tenant_id)
        )
        if enabled is not None or category is not None or kind is not None:
            rows = [
                p
                for p in rows
                if (enabled is None or p["enabled"] is enabled)
                and (category is None or p["category"] == category)
                and (kind is None or p["kind"] == kind)
            ]
        return {
            "items": rows[skip : skip + limit],
            "total": len(rows),
            "skip": skip,
            "limit": limit,
        }

    async def _list(self, tenant_id: str) -> list[dict[str, Any]]:
        async with self._db.session() as session:
            plugins = list(await session.scalars(select(Plugin).order_by(Plugin.plugin_id)))
            instances = await self._instances(session, [p.id for p in plugins], tenant_id)
        return [self._summary(p, instances.get(p.id, [])).model_dump(mode="json") for p in plugins]

    async def detail(self, plugin_id: str, *, tenant_id: str) -> PluginDetail:
        """One plugin with its manifest, schema, metrics and the tenant's instances; 404 if unknown."""
        return PluginDetail.model_validate(await self.detail_data(plugin_id, tenant_id=tenant_id))

    async def ensure_known(self, plugin_id: str, *, tenant_id: str) -> None:
        """Raise ``NotFoundError`` (404) unless the catalog holds ``plugin_id``.

        Every discovered plugin has a row, so the registry answers without a read; only an
        id it lacks (say, a row whose code disappeared) is looked up.
        """
        try:
            self._registry.get(plugin_id)
        except NotFoundError:
            await self.detail_data(plugin_id, tenant_id=tenant_id)

    async def detail_data(self, plugin_id: str, *, tenant_id: str) -> dict[str, Any]:
        """:meth:`detail` as the JSON values the cache holds (no model built); 404 if unknown."""
        data: dict[str, Any] = decode(await self.detail_json(plugin_id, tenant_id=tenant_id))
        return data

    async def detail_json(self, plugin_id: str, *, tenant_id: str) -> bytes:
        """:meth:`detail` as the JSON bytes the cache holds (what the API answers); 404 if unknown."""

        async def build() -> dict[str, Any]:
            async with self._db.session() as session:
                plugin = await session.scalar(select(Plugin).where(Plugin.plugin_id == plugin_id))
                if plugin is None:
                    raise NotFoundError(f"unknown plugin {plugin_id!r}")
                instances = (await self._instances(session, [plugin.id], tenant_id)).get(
                    plugin.id, []
                )
            default = next((i for i in instances if i.name == DEFAULT_INSTANCE), None)
            detail = PluginDetail(
                **self._summary(plugin, instances).model_dump(),
                manifest=plugin.manifest,
                config=default.config if default else {},
                config_schema=plugin.config_schema,
                metrics=self._metrics(plugin_id),
                instances=instances,
            )
            return detail.model_dump(mode="json")

        return await self._cache.get_or_set_encoded(
            detail_key(plugin_id, tenant_id), self._ttl.status_s, build
        )

    async def categories(self, *, tenant_id: str) -> list[CategoryOut]:
        """Each category with its plugin counts (enabled: for this tenant)."""

        async def build() -> list[dict[str, Any]]:
            async with self._db.session() as session:
                rows = await session.execute(
                    select(
                        Plugin.category,
                        func.count(),
                        func.coalesce(func.sum(case((_enabled_in(tenant_id), 1), else_=0)), 0),
                    )
                    .group_by(Plugin.category)
                    .order_by(Plugin.category)
                )
                return [
                    CategoryOut(category=c, plugins=int(n), enabled=int(e)).model_dump()
                    for c, n, e in rows
                ]

        data = await self._cache.get_or_set(categories_key(tenant_id), self._ttl.dashboard_s, build)
        return [CategoryOut.model_validate(d) for d in data]

    async def invalidate(self, plugin_id: str, tenant_id: str) -> None:
        """Forget cached reads about ``plugin_id`` in a tenant (enabled, disabled, reconfigured)."""
        await self._cache.delete(
            *plugin_keys(plugin_id, tenant_id), *dashboard_keys(tenant_id), list_key(tenant_id)
        )

    def _metrics(self, plugin_id: str) -> list[MetricInfo]:
        try:
            cls = self._registry.get(plugin_id).cls
        except NotFoundError:
            return []
        declared = getattr(cls, "metrics", ()) if cls is not None else ()
        return [
            MetricInfo(
                name=m.name,
                unit=m.unit,
                description=m.description,
                type=m.type,
                labels=list(m.labels),
            )
            for m in declared
        ]

    @staticmethod
    async def _instances(
        session: AsyncSession, plugin_pks: list[uuid.UUID], tenant_id: str
    ) -> dict[uuid.UUID, list[InstanceOut]]:
        if not plugin_pks:
            return {}
        rows = await session.execute(
            select(PluginInstance, PluginStatus)
            .outerjoin(PluginStatus, PluginStatus.instance_id == PluginInstance.id)
            .where(PluginInstance.plugin_pk.in_(plugin_pks), PluginInstance.tenant_id == tenant_id)
            .order_by(PluginInstance.name)
        )
        out: dict[uuid.UUID, list[InstanceOut]] = {}
        for instance, status in rows:
            out.setdefault(instance.plugin_pk, []).append(
                InstanceOut(
                    id=instance.id,
                    name=instance.name,
                    tenant_id=instance.tenant_id,
                    enabled=instance.enabled,
                    interval_s=instance.interval_s,
                    config=instance.config,
                    status=StatusOut.model_validate(status) if status is not None else StatusOut(),
                )
            )
        return out

    @staticmethod
    def _summary(plugin: Plugin, instances: list[InstanceOut]) -> PluginSummary:
        running = [Health(i.status.health) for i in instances if i.enabled]
        shown = worst(running)
        return PluginSummary(
            plugin_id=plugin.plugin_id,
            name=plugin.name,
            version=plugin.version,
            kind=plugin.kind,
            category=plugin.category,
            description=plugin.description,
            source=plugin.source,
            verified=plugin.verified,
            enabled=bool(running),
            broken=plugin.broken_error is not None,
            error=plugin.broken_error,
            instance_count=len(instances),
            health=shown.value if shown else None,
        )


def list_key(tenant_id: str) -> str:
    """Every plugin's summary as a tenant sees it, by id: what ``GET /api/plugins`` pages.

    Enabling, disabling or configuring through the catalog drops it at once; health changes
    (executions, staleness) reach it within its TTL (:data:`LIST_TTL_S` at most), while the
    per-plugin reads, which executions invalidate, show them at once.
    """
    return f"plugins:{tenant_id}:list"


def _enabled_in(tenant_id: str) -> ColumnElement[bool]:
    """SQL: the plugin has an enabled instance in ``tenant_id``."""
    return (
        select(PluginInstance.id)
        .where(
            PluginInstance.plugin_pk == Plugin.id,
            PluginInstance.tenant_id == tenant_id,
            PluginInstance.enabled.is_(True),
        )
        .exists()
    )
