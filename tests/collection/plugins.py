"""Collectors that misbehave on purpose, registered into a test registry."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, ClassVar

from unity.plugins.registry import PluginRegistry
from unity.plugins.sdk import Collected, Collector, Context, Manifest, Metric, PluginConfig, Sample


def _manifest(plugin_id: str) -> Manifest:
    return Manifest(id=plugin_id, name=plugin_id, version="1.0.0", category="test")


class StepConfig(PluginConfig):
    start: float = 0.0


class Steady(Collector[StepConfig]):
    """Counts its calls: 1, 2, 3, … plus a labelled sample and a snapshot."""

    manifest = _manifest("steady")
    metrics = (Metric("steady_value", unit="count", description="calls so far"),)

    def __init__(self) -> None:
        self.calls = 0

    async def collect(self, ctx: Context[StepConfig]) -> Collected:
        self.calls += 1
        return Collected(
            samples=[
                Sample("steady_value", ctx.config.start + self.calls),
                Sample("steady_part", 1.0, {"part": "a"}),
                Sample("steady_part", 2.0, {"part": "b"}),
            ],
            snapshot={"calls": self.calls},
        )


class Boom(Collector[PluginConfig]):
    manifest = _manifest("boom")

    async def collect(self, ctx: Context[PluginConfig]) -> Collected:
        raise RuntimeError("boom")


class FlakyConfig(PluginConfig):
    fail_times: int = 1


class Flaky(Collector[FlakyConfig]):
    """Fails ``fail_times`` times, then succeeds."""

    manifest = _manifest("flaky")

    def __init__(self) -> None:
        self.calls = 0

    async def collect(self, ctx: Context[FlakyConfig]) -> Collected:
        self.calls += 1
        if self.calls <= ctx.config.fail_times:
            raise ConnectionError(f"attempt {self.calls} failed")
        return Collected(samples=[Sample("flaky_ok", 1.0)])


class Hang(Collector[PluginConfig]):
    manifest = _manifest("hang")

    async def collect(self, ctx: Context[PluginConfig]) -> Collected:
        await asyncio.sleep(3600)
        return Collected()


class MalformedConfig(PluginConfig):
    mode: str = "dict"


class Malformed(Collector[MalformedConfig]):
    manifest = _manifest("malformed")

    async def collect(self, ctx: Context[MalformedConfig]) -> Any:
        mode = ctx.config.mode
        if mode == "dict":
            return {"cpu": 1}
        if mode == "string_value":
            return Collected(samples=[Sample("cpu", "high")])  # type: ignore[arg-type]
        if mode == "bad_name":
            return Collected(samples=[Sample("cpu usage", 1.0)])
        if mode == "nan":
            return Collected(samples=[Sample("cpu", float("nan"))])
        if mode == "not_a_sample":
            return Collected(samples=[("cpu", 1.0)])  # type: ignore[list-item]
        return Collected(samples=[Sample("cpu", 1.0)], snapshot={"x": object()})


class SlowConfig(PluginConfig):
    delay: float = 0.3


class Slow(Collector[SlowConfig]):
    """Sleeps; records how many of its executions ever overlapped."""

    manifest = _manifest("slow")
    running: ClassVar[int] = 0
    max_running: ClassVar[int] = 0
    finished: ClassVar[int] = 0

    async def collect(self, ctx: Context[SlowConfig]) -> Collected:
        Slow.running += 1
        Slow.max_running = max(Slow.max_running, Slow.running)
        try:
            await asyncio.sleep(ctx.config.delay)
        finally:
            Slow.running -= 1
        Slow.finished += 1
        return Collected(samples=[Sample("slow_done", 1.0)])


class Silent(Collector[PluginConfig]):
    """Succeeds without any data."""

    manifest = _manifest("silent")

    async def collect(self, ctx: Context[PluginConfig]) -> Collected:
        return Collected()


class FirehoseConfig(PluginConfig):
    series: int = 200
    per_series: int = 100


class Firehose(Collector[FirehoseConfig]):
    """Many samples per execution, each series with ``per_series`` points 1 ms apart."""

    manifest = _manifest("firehose")

    async def collect(self, ctx: Context[FirehoseConfig]) -> Collected:
        base = ctx.clock.now()
        return Collected(
            samples=[
                Sample(
                    "firehose_value", float(i * j), {"n": str(i)}, base + timedelta(milliseconds=j)
                )
                for i in range(ctx.config.series)
                for j in range(ctx.config.per_series)
            ]
        )


ALL = (Steady, Boom, Flaky, Hang, Malformed, Slow, Silent, Firehose)


def make_registry(*, with_builtins: bool = False) -> PluginRegistry:
    registry = PluginRegistry()
    if with_builtins:
        registry.discover()
    for cls in ALL:
        registry.register(cls, source="builtin", origin=f"tests:{cls.__name__}", verified=True)
    return registry
