"""The host Unity runs on: CPU, memory, swap, disks, disk and network I/O, load, sensors.

Everything is read with psutil in a worker thread (``/proc`` reads and ``statvfs`` can stall
on a busy or network-mounted host; the event loop must not).

Percentages and rates compare two readings of the kernel's cumulative counters, so they are
averages over a window that starts at the previous collection of this instance (the counters
are kept on the plugin object) and ends now. A window is never shorter than ``MIN_WINDOW_S``:
the first collection has no previous reading, so it reads the counters, waits
``MIN_WINDOW_S`` in the worker thread and reads them again; a collection that follows the last
one too closely waits out the rest. So every collection emits CPU percentages and I/O rates,
none emits a made-up zero, and none divides a few clock ticks into a noisy 0 % or 100 %.

A counter that went backwards (a NIC re-created, a counter reset) yields no rate for that
window rather than a negative one. Loopback and container ``veth*`` interfaces are left out:
loopback traffic never leaves the host, container traffic is counted again on the bridge and
the physical NIC, and Docker creates a new ``veth`` name for every container start, which would
grow an unbounded set of series.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from unity.plugins.sdk import (
    Collected,
    Collector,
    Context,
    Manifest,
    Metric,
    PluginConfig,
    Sample,
    samples_from,
)

__all__ = ["MIN_WINDOW_S", "PLUGIN", "SystemInfo", "SystemInfoConfig"]

MIN_WINDOW_S = 0.5
"""Shortest window, in seconds, that percentages and rates are averaged over."""

# Filesystems that hold no user data: kernel interfaces, memory-backed and read-only images
# (every snap package is a squashfs mount that is always 100 % full).
PSEUDO_FILESYSTEMS = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nsfs",
        "overlay",
        "proc",
        "pstore",
        "ramfs",
        "securityfs",
        "squashfs",
        "sysfs",
        "tmpfs",
        "tracefs",
    }
)
SKIPPED_INTERFACE_PREFIXES = ("lo", "veth")


class SystemInfoConfig(PluginConfig):
    """``system_info`` needs no settings beyond the common ones."""


class CounterReading(NamedTuple):
    """The cumulative counters rates and percentages are computed from."""

    at: float
    """``Clock.monotonic()`` when the counters were read."""
    cpu: Any
    """``psutil.cpu_times()``."""
    cores: list[Any]
    """``psutil.cpu_times(percpu=True)``."""
    disk_io: Any | None
    """``psutil.disk_io_counters()``; ``None`` on hosts without disk statistics."""
    net_io: dict[str, Any]
    """``psutil.net_io_counters(pernic=True)`` minus skipped interfaces."""


@dataclass(frozen=True, slots=True)
class Window:
    """Two counter readings: what the rate and percentage metrics are computed from."""

    previous: CounterReading
    current: CounterReading

    @property
    def seconds(self) -> float:
        """Length of the window."""
        return self.current.at - self.previous.at

    def rate(self, pick: Callable[[CounterReading], float | None]) -> float | None:
        """Per-second increase of a counter; ``None`` if it went backwards or time did not pass."""
        before, after = pick(self.previous), pick(self.current)
        if before is None or after is None or after < before or self.seconds <= 0:
            return None
        return (after - before) / self.seconds


@dataclass(frozen=True, slots=True)
class StateReading:
    """Values that are meaningful on their own (no previous reading needed)."""

    memory: Any
    swap: Any
    disks: dict[str, Any]
    """Mount point -> ``psutil.disk_usage``."""
    load: tuple[float, float, float] | None
    boot_time: float
    process_count: int
    temperatures: dict[str, float]
    """Sensor name -> degrees Celsius."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One collection's view of the host, handed to the metric ``value_fn``s."""

    window: Window
    state: StateReading
    now: float
    """Unix time of the collection (from the context's clock)."""


@dataclass(frozen=True, slots=True)
class CoreWindow:
    """One CPU core's times at both ends of the window."""

    previous: Any
    current: Any


@dataclass(frozen=True, slots=True)
class InterfaceWindow:
    """One network interface's counters at both ends of the window."""

    window: Window
    name: str

    def rate(self, counter: str) -> float | None:
        """Per-second increase of one of the interface's counters (``bytes_recv``, ...)."""

        def pick(reading: CounterReading) -> float | None:
            nic = reading.net_io.get(self.name)
            return None if nic is None else float(getattr(nic, counter))

        return self.window.rate(pick)


def busy_percent(previous: Any, current: Any) -> float | None:
    """Share of CPU time spent not idle between two ``cpu_times`` readings, like psutil's.

    Guest time is already counted in user time on Linux, and I/O wait is idle time.
    """

    def total(times: Any) -> float:
        return float(sum(times)) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)

    def busy(times: Any) -> float:
        return total(times) - float(times.idle) - getattr(times, "iowait", 0.0)

    all_delta = total(current) - total(previous)
    if all_delta <= 0:
        return None
    busy_delta = busy(current) - busy(previous)
    return min(100.0, max(0.0, busy_delta / all_delta * 100.0))


def _disk_counter(name: str) -> Callable[[CounterReading], float | None]:
    def pick(reading: CounterReading) -> float | None:
        return None if reading.disk_io is None else float(getattr(reading.disk_io, name))

    return pick


def _load(index: int) -> Callable[[Reading], float | None]:
    def value(reading: Reading) -> float | None:
        load = reading.state.load
        return None if load is None else load[index]

    return value


HOST_METRICS: tuple[Metric, ...] = (
    Metric(
        "cpu_percent",
        unit="percent",
        description="CPU busy time over the window, all cores",
        value_fn=lambda r: busy_percent(r.window.previous.cpu, r.window.current.cpu),
    ),
    Metric(
        "memory_total_bytes",
        unit="bytes",
        description="Physical memory",
        value_fn=lambda r: r.state.memory.total,
    ),
    Metric(
        "memory_used_bytes",
        unit="bytes",
        description="Memory in use (total minus free, buffers and cache)",
        value_fn=lambda r: r.state.memory.used,
    ),
    Metric(
        "memory_available_bytes",
        unit="bytes",
        description="Memory that can be given to processes without swapping",
        value_fn=lambda r: r.state.memory.available,
    ),
    Metric(
        "memory_percent",
        unit="percent",
        description="Share of memory not available",
        value_fn=lambda r: r.state.memory.percent,
    ),
    Metric(
        "swap_total_bytes",
        unit="bytes",
        description="Swap space",
        value_fn=lambda r: r.state.swap.total,
    ),
    Metric(
        "swap_used_bytes",
        unit="bytes",
        description="Swap space in use",
        value_fn=lambda r: r.state.swap.used,
    ),
    Metric(
        "swap_free_bytes",
        unit="bytes",
        description="Swap space free",
        value_fn=lambda r: r.state.swap.free,
    ),
    Metric(
        "swap_percent",
        unit="percent",
        description="Share of swap in use",
        value_fn=lambda r: r.state.swap.percent,
    ),
    Metric(
        "disk_read_bytes_per_second",
        unit="bytes/s",
        description="Bytes read from all disks, averaged over the window",
        value_fn=lambda r: r.window.rate(_disk_counter("read_bytes")),
    ),
    Metric(
        "disk_write_bytes_per_second",
        unit="bytes/s",
        description="Bytes written to all disks, averaged over the window",
        value_fn=lambda r: r.window.rate(_disk_counter("write_bytes")),
    ),
    Metric("load_1m", description="Load average over 1 minute", value_fn=_load(0)),
    Metric("load_5m", description="Load average over 5 minutes", value_fn=_load(1)),
    Metric("load_15m", description="Load average over 15 minutes", value_fn=_load(2)),
    Metric(
        "uptime_seconds",
        unit="s",
        description="Time since the host booted",
        value_fn=lambda r: max(0.0, r.now - r.state.boot_time),
    ),
    Metric(
        "process_count",
        description="Processes on the host",
        value_fn=lambda r: r.state.process_count,
    ),
)
CORE_METRICS: tuple[Metric, ...] = (
    Metric(
        "cpu_core_percent",
        unit="percent",
        description="CPU busy time over the window, one core",
        labels=("core",),
        value_fn=lambda c: busy_percent(c.previous, c.current),
    ),
)
MOUNT_METRICS: tuple[Metric, ...] = (
    Metric(
        "disk_total_bytes",
        unit="bytes",
        description="Size of the filesystem",
        labels=("mount",),
        value_fn=lambda u: u.total,
    ),
    Metric(
        "disk_used_bytes",
        unit="bytes",
        description="Space used on the filesystem",
        labels=("mount",),
        value_fn=lambda u: u.used,
    ),
    Metric(
        "disk_free_bytes",
        unit="bytes",
        description="Space free for unprivileged users",
        labels=("mount",),
        value_fn=lambda u: u.free,
    ),
    Metric(
        "disk_percent",
        unit="percent",
        description="Share of the filesystem in use",
        labels=("mount",),
        value_fn=lambda u: u.percent,
    ),
)
INTERFACE_METRICS: tuple[Metric, ...] = (
    Metric(
        "net_recv_bytes_per_second",
        unit="bytes/s",
        description="Bytes received, averaged over the window",
        labels=("interface",),
        value_fn=lambda i: i.rate("bytes_recv"),
    ),
    Metric(
        "net_sent_bytes_per_second",
        unit="bytes/s",
        description="Bytes sent, averaged over the window",
        labels=("interface",),
        value_fn=lambda i: i.rate("bytes_sent"),
    ),
)
SENSOR_METRICS: tuple[Metric, ...] = (
    Metric(
        "temperature_celsius",
        unit="celsius",
        description="Temperature reported by a hardware sensor",
        labels=("sensor",),
        value_fn=lambda degrees: degrees,
    ),
)


def read_counters(monotonic: Callable[[], float]) -> CounterReading:
    """Read the cumulative counters (blocking)."""
    nics = psutil.net_io_counters(pernic=True)
    return CounterReading(
        at=monotonic(),
        cpu=psutil.cpu_times(),
        cores=list(psutil.cpu_times(percpu=True)),
        disk_io=psutil.disk_io_counters(),
        net_io={
            name: counters
            for name, counters in nics.items()
            if not name.startswith(SKIPPED_INTERFACE_PREFIXES)
        },
    )


def read_window(previous: CounterReading | None, monotonic: Callable[[], float]) -> Window:
    """The window from ``previous`` (or from now) to at least ``MIN_WINDOW_S`` later (blocking)."""
    start = previous if previous is not None else read_counters(monotonic)
    remaining = MIN_WINDOW_S - (monotonic() - start.at)
    if remaining > 0:
        # Runs in a worker thread: the wait holds no event loop.
        time.sleep(remaining)
    return Window(previous=start, current=read_counters(monotonic))


def read_disks() -> dict[str, Any]:
    """Usage of every real, mounted filesystem, keyed by mount point (blocking)."""
    usage: dict[str, Any] = {}
    seen_devices: set[str] = set()
    for partition in psutil.disk_partitions(all=False):
        if partition.fstype in PSEUDO_FILESYSTEMS or partition.mountpoint in usage:
            continue
        # A bind mount shows the same device again (inside containers even single files);
        # the first mount point of a device stands for it.
        if partition.device and partition.device in seen_devices:
            continue
        if not os.path.isdir(partition.mountpoint):
            continue
        try:
            usage[partition.mountpoint] = psutil.disk_usage(partition.mountpoint)
        except OSError:
            # Unreadable (permissions) or gone between listing and stat: not this host's disk.
            continue
        if partition.device:
            seen_devices.add(partition.device)
    return usage


def read_temperatures() -> dict[str, float]:
    """Sensor readings in degrees Celsius, named ``chip/label`` (blocking)."""
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:  # not provided on this platform
        return {}
    try:
        chips: Mapping[str, list[Any]] = read()
    except (OSError, RuntimeError):
        return {}
    out: dict[str, float] = {}
    for chip, entries in chips.items():
        for index, entry in enumerate(entries):
            name = f"{chip}/{entry.label}" if entry.label else f"{chip}/{index}"
            if name in out:
                name = f"{name}#{index}"
            out[name] = float(entry.current)
    return out


def read_state() -> StateReading:
    """Read everything that needs no previous reading (blocking)."""
    try:
        load: tuple[float, float, float] | None = psutil.getloadavg()
    except (AttributeError, OSError):
        load = None
    return StateReading(
        memory=psutil.virtual_memory(),
        swap=psutil.swap_memory(),
        disks=read_disks(),
        load=load,
        boot_time=psutil.boot_time(),
        process_count=len(psutil.pids()),
        temperatures=read_temperatures(),
    )


def cpu_model() -> str | None:
    """The CPU's marketing name, where the platform tells it (blocking)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor", "cpu model"):
                return value.strip() or None
    return platform.processor() or None


def platform_info() -> dict[str, Any]:
    """Static facts about the host for the snapshot (blocking)."""
    uname = platform.uname()
    return {
        "os": uname.system,
        "release": uname.release,
        "version": uname.version,
        "architecture": uname.machine,
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "boot_time": datetime.fromtimestamp(psutil.boot_time(), tz=UTC).isoformat(),
    }


class SystemInfo(Collector[SystemInfoConfig]):
    """CPU, memory, swap, disk, network, load, uptime and sensors of the local host."""

    manifest = Manifest(
        id="system_info",
        name="System",
        version="1.0.0",
        category="system",
        description="CPU, memory, swap, disks, disk and network I/O, load, uptime and "
        "temperatures of the host Unity runs on.",
        permissions=("system",),
    )
    metrics = HOST_METRICS + CORE_METRICS + MOUNT_METRICS + INTERFACE_METRICS + SENSOR_METRICS

    def __init__(self) -> None:
        # The counters of the previous collection: the start of the next window.
        self._counters: CounterReading | None = None
        self._platform: dict[str, Any] | None = None

    async def collect(self, ctx: Context[SystemInfoConfig]) -> Collected:
        """Read the host once; rates cover the time since this instance's last collection."""
        if self._platform is None:
            self._platform = await ctx.run_blocking(platform_info)
        window = await ctx.run_blocking(read_window, self._counters, ctx.clock.monotonic)
        state = await ctx.run_blocking(read_state)
        self._counters = window.current
        reading = Reading(window=window, state=state, now=ctx.clock.now().timestamp())

        samples: list[Sample] = samples_from(HOST_METRICS, reading)
        for index, (before, after) in enumerate(
            zip(window.previous.cores, window.current.cores, strict=False)
        ):
            samples += samples_from(
                CORE_METRICS, CoreWindow(before, after), labels={"core": str(index)}
            )
        for mount, usage in state.disks.items():
            samples += samples_from(MOUNT_METRICS, usage, labels={"mount": mount})
        for name in sorted(window.current.net_io):
            samples += samples_from(
                INTERFACE_METRICS, InterfaceWindow(window, name), labels={"interface": name}
            )
        for sensor, degrees in state.temperatures.items():
            samples += samples_from(SENSOR_METRICS, degrees, labels={"sensor": sensor})

        snapshot = {
            "platform": self._platform,
            "window_seconds": round(window.seconds, 3),
            "mounts": sorted(state.disks),
            "interfaces": sorted(window.current.net_io),
            "sensors": sorted(state.temperatures),
        }
        return Collected(samples=samples, snapshot=snapshot)


PLUGIN = SystemInfo
