"""The public plugin API: what a plugin author imports.

A collector in full::

    from unity.plugins.sdk import Collected, Collector, Context, Manifest, Metric, PluginConfig, Sample

    class PingConfig(PluginConfig):
        host: str

    class Ping(Collector[PingConfig]):
        manifest = Manifest(id="ping", name="Ping", version="1.0.0", category="network",
                            description="Round-trip time to a host.", permissions=["network"])
        metrics = (Metric("ping_rtt_ms", unit="ms", description="round-trip time"),)

        async def collect(self, ctx: Context[PingConfig]) -> Collected:
            rtt = await ctx.run_blocking(measure, ctx.config.host)
            return Collected(samples=[Sample("ping_rtt_ms", rtt)])

A plugin never touches the database, the scheduler or the event bus: it returns data.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import (
    Any,
    ClassVar,
    Generic,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    get_args,
    get_origin,
)

import httpx
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from unity.core.clock import Clock

__all__ = [
    "Action",
    "ActionContext",
    "ActionError",
    "ActionInfo",
    "ActionParams",
    "Collected",
    "Collector",
    "Context",
    "Manifest",
    "Metric",
    "Permission",
    "Plan",
    "Plugin",
    "PluginConfig",
    "PluginKind",
    "Progress",
    "Result",
    "Sample",
    "StepRunner",
    "samples_from",
]

PluginKind = Literal["collector", "action", "notifier", "exporter", "transform", "visualization"]
Permission = Literal["network", "docker", "filesystem", "exec", "system"]

SLUG = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

P = ParamSpec("P")
R = TypeVar("R")


class PluginConfig(BaseModel):
    """Base of every plugin's configuration model.

    Subclass it and add fields; the JSON Schema of the subclass is what the API serves and
    validates against. The fields here are understood by the scheduler for every plugin.
    """

    model_config = ConfigDict(extra="forbid")

    collection_interval: int = Field(
        default=60, ge=1, le=86_400, description="Seconds between two collections."
    )
    timeout: float | None = Field(
        default=None, gt=0, le=3_600, description="Per-execution timeout; default from settings."
    )
    retries: int = Field(default=0, ge=0, le=10, description="Extra attempts after a failure.")
    retry_delay: float = Field(default=5.0, ge=0, le=600, description="Seconds between attempts.")


class Manifest(BaseModel):
    """What a plugin is: identity, kind, category and the permissions it needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Unique slug: lowercase letters, digits and underscores.")
    name: str = Field(min_length=1, max_length=200)
    version: str = Field(pattern=r"^\d+\.\d+(\.\d+)?([.+-][0-9A-Za-z.+-]+)?$")
    kind: PluginKind = "collector"
    category: str = Field(default="general", min_length=1, max_length=50)
    description: str = ""
    permissions: tuple[Permission, ...] = ()
    author: str | None = None
    homepage: str | None = None

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError(
                "must be 2-64 chars: lowercase letters, digits, '_', starting with a letter"
            )
        return value


@dataclass(frozen=True, slots=True)
class Metric:
    """Describes one metric a plugin emits: data, not code.

    ``value_fn``, when given, extracts the value from an object the plugin collected
    (see :func:`samples_from`), so a table of ``Metric`` replaces a chain of ifs.
    """

    name: str
    unit: str = ""
    description: str = ""
    type: Literal["gauge", "counter"] = "gauge"
    labels: tuple[str, ...] = ()
    value_fn: Callable[[Any], float | None] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured value. ``ts`` defaults to the execution's start time."""

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    ts: datetime | None = None

    def problem(self) -> str | None:
        """Why this sample cannot be stored, or ``None`` when it is well formed."""
        if not isinstance(self.name, str) or not METRIC_NAME.match(self.name):
            return f"invalid metric name {self.name!r}"
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            return f"{self.name}: value {self.value!r} is not a number"
        if not math.isfinite(self.value):
            return f"{self.name}: value {self.value!r} is not finite"
        if not isinstance(self.labels, Mapping):
            return f"{self.name}: labels must be a mapping"
        for key, val in self.labels.items():
            if not isinstance(key, str) or not LABEL_NAME.match(key) or not isinstance(val, str):
                return f"{self.name}: bad label {key!r}={val!r} (names [a-zA-Z_][a-zA-Z0-9_]*, str values)"
        if self.ts is not None and (not isinstance(self.ts, datetime) or self.ts.tzinfo is None):
            return f"{self.name}: ts must be a timezone-aware datetime"
        return None


@dataclass(slots=True)
class Collected:
    """What ``collect`` returns: samples for the time series, and an optional rich snapshot."""

    samples: list[Sample] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None


C = TypeVar("C", bound=PluginConfig)


@dataclass(slots=True)
class Context(Generic[C]):
    """What a plugin gets for one execution."""

    config: C
    """The instance's validated configuration."""
    http: httpx.AsyncClient
    """A shared HTTP client (connection pooling); pass per-request timeouts as needed."""
    clock: Clock
    """The time source; use it instead of ``datetime.now()`` so tests can control time."""
    log: structlog.stdlib.BoundLogger
    """A logger bound to the plugin and instance."""
    plugin_id: str
    instance_id: str
    instance_name: str = "default"

    async def run_blocking(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a blocking call (a library without async support) in a worker thread."""
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


class Plugin(Generic[C]):
    """Base of every plugin. Subclass a kind (``Collector``), not this."""

    manifest: ClassVar[Manifest]
    config_model: ClassVar[type[PluginConfig]] = PluginConfig
    kind: ClassVar[PluginKind]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Collector[HttpCheckConfig] names the config model; pick it up from the generic base.
        for base in cls.__dict__.get("__orig_bases__", ()):
            if get_origin(base) is None:
                continue
            for arg in get_args(base):
                if isinstance(arg, type) and issubclass(arg, PluginConfig):
                    cls.config_model = arg

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        """The JSON Schema of this plugin's configuration."""
        return cls.config_model.model_json_schema()

    async def close(self) -> None:
        """Release resources when the instance is removed or Unity stops. Default: nothing."""


class Collector(Plugin[C]):
    """A plugin that measures something on a schedule."""

    kind: ClassVar[PluginKind] = "collector"
    metrics: ClassVar[tuple[Metric, ...]] = ()
    """The metrics this collector emits (documentation, units, and ``samples_from``)."""

    async def collect(self, ctx: Context[C]) -> Collected:
        """Measure once. Raise an exception (``CollectionError`` for a clean message) on failure."""
        raise NotImplementedError


def samples_from(
    metrics: Iterable[Metric], source: Any, labels: Mapping[str, str] | None = None
) -> list[Sample]:
    """Apply each metric's ``value_fn`` to ``source``; skip metrics whose value is ``None``."""
    out: list[Sample] = []
    for metric in metrics:
        if metric.value_fn is None:
            continue
        value = metric.value_fn(source)
        if value is not None:
            out.append(Sample(metric.name, float(value), dict(labels or {})))
    return out


# --- actions -------------------------------------------------------------------------------


class ActionParams(BaseModel):
    """Base of every action's parameter model (what a task stores in ``params``).

    Subclass it and add fields; its JSON Schema is what the API validates a task's
    ``params`` against and serves as the action's ``config_schema``.
    """

    model_config = ConfigDict(extra="forbid")


A = TypeVar("A", bound=ActionParams)


class Plan(BaseModel):
    """What an action will do, concretely enough for a person to approve it.

    ``steps`` lists each change in order (each a JSON object with at least a
    ``description``); ``data`` holds whatever ``apply`` needs to do exactly that and no
    more. The plan is stored with the run and hashed (:meth:`digest`); ``apply`` receives
    the very plan that was approved. ``metrics`` are recorded as run metrics (e.g. LLM
    token usage spent while planning).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    summary: str = Field(description="One line saying what applying the plan will do.")
    steps: list[dict[str, Any]] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Whether there is nothing to do."""
        return not self.steps

    def digest(self) -> str:
        """SHA-256 (hex) of the plan's canonical JSON: the ``plan_hash`` approvals name."""
        payload = orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(payload).hexdigest()


class Result(BaseModel):
    """What applying (or rolling back) a plan did."""

    model_config = ConfigDict(extra="forbid")

    success: bool = True
    summary: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    """JSON-able details; ``rollback`` receives them back."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Recorded as run metrics, e.g. ``{"bytes_freed": 1234, "steps": 3}``."""


class Progress(Protocol):
    """Reports a step of ``apply``: published as a ``progress`` event and kept in the run log."""

    async def __call__(
        self, step: int, total: int | None, message: str, *, percent: float | None = None
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class ActionInfo:
    """An action another action may compose (what ``llm_planner`` offers its model)."""

    plugin_id: str
    description: str
    params_schema: dict[str, Any]


class StepRunner(Protocol):
    """Lets an action plan and apply other actions as its steps (the engine provides it)."""

    def actions(self) -> list[ActionInfo]:
        """The actions that may be used as steps (never the calling action itself)."""
        ...

    async def plan(self, action: str, params: dict[str, Any]) -> Plan:
        """Validate ``params`` for ``action`` and return that action's plan."""
        ...

    async def apply(
        self,
        action: str,
        plan: Plan,
        progress: Progress,
        *,
        params: dict[str, Any] | None = None,
    ) -> Result:
        """Apply a plan that ``plan`` returned for ``action``.

        ``params`` are the ones the plan was made with (the step's ``ctx.params``); keep
        them in your own plan's ``data`` next to the step's plan.
        """
        ...


@dataclass(slots=True)
class ActionContext(Generic[A]):
    """What an action gets for one plan, apply or rollback."""

    params: A
    """The task's validated parameters."""
    http: httpx.AsyncClient
    clock: Clock
    log: structlog.stdlib.BoundLogger
    plugin_id: str
    task_id: str
    run_id: str
    tenant_id: str
    data_dir: Path
    """Unity's data directory; an action keeps its own files under ``data_dir/actions/<id>``."""
    description: str = ""
    """The task's free-text description (what ``llm_planner`` plans from)."""
    max_rounds: int | None = None
    steps: StepRunner | None = None

    def workdir(self) -> Path:
        """``data_dir/actions/<plugin_id>``, created on first use."""
        path = self.data_dir / "actions" / self.plugin_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def run_blocking(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a blocking call in a worker thread."""
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


class ActionError(Exception):
    """An action cannot plan or apply; the message is shown to the user as the run's error."""


class Action(Plugin[Any], Generic[A]):
    """A plugin that changes something, in two steps: ``plan`` (no side effects), then ``apply``.

    ``apply`` must do exactly what the approved plan says; anything that changed since
    planning is skipped and reported, never acted on blindly. Implement ``rollback`` when
    the change can be undone (``supports_rollback`` says so).
    """

    kind: ClassVar[PluginKind] = "action"
    params_model: ClassVar[type[ActionParams]] = ActionParams
    requires_admin: ClassVar[bool] = False
    """Tasks using this action may only be created by a key with the ``admin`` scope."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            for arg in get_args(base):
                if isinstance(arg, type) and issubclass(arg, ActionParams):
                    cls.params_model = arg

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        """The JSON Schema of this action's parameters."""
        return cls.params_model.model_json_schema()

    @classmethod
    def supports_rollback(cls) -> bool:
        """Whether this action overrides :meth:`rollback`."""
        return cls.rollback is not Action.rollback

    async def plan(self, ctx: ActionContext[A]) -> Plan:
        """Work out what to do, without changing anything."""
        raise NotImplementedError

    async def apply(self, ctx: ActionContext[A], plan: Plan, progress: Progress) -> Result:
        """Do exactly what ``plan`` says, reporting each step through ``progress``."""
        raise NotImplementedError

    async def rollback(self, ctx: ActionContext[A], plan: Plan, result: Result) -> Result:
        """Undo what ``apply`` did (``result`` is what it returned)."""
        raise NotImplementedError
