"""The system collector on the machine running the tests."""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import pytest

from unity.plugins.builtin import system_info
from unity.plugins.builtin.system_info import (
    MIN_WINDOW_S,
    PSEUDO_FILESYSTEMS,
    CounterReading,
    InterfaceWindow,
    SystemInfoConfig,
    Window,
)
from unity.plugins.sdk import Collected, Context

MakeContext = Callable[..., Context[Any]]


def scalars(collected: Collected) -> dict[str, float]:
    assert all(sample.problem() is None for sample in collected.samples)
    return {s.name: s.value for s in collected.samples if not s.labels}


def by_label(collected: Collected, name: str, label: str) -> dict[str, float]:
    return {s.labels[label]: s.value for s in collected.samples if s.name == name}


async def test_the_first_collection_describes_the_host(make_context, assert_declared) -> None:
    collected = await system_info.PLUGIN().collect(make_context(SystemInfoConfig(), "system_info"))

    assert_declared(system_info.PLUGIN, collected)
    host = scalars(collected)
    assert 0 <= host["cpu_percent"] <= 100
    cores = by_label(collected, "cpu_core_percent", "core")
    assert set(cores) == {str(i) for i in range(psutil.cpu_count() or 1)}
    assert all(0 <= percent <= 100 for percent in cores.values())
    assert host["memory_total_bytes"] == psutil.virtual_memory().total
    assert 0 < host["memory_available_bytes"] <= host["memory_total_bytes"]
    assert host["swap_total_bytes"] == psutil.swap_memory().total
    assert host["load_1m"] >= 0
    assert host["uptime_seconds"] > 0
    assert host["process_count"] >= 1
    if psutil.disk_io_counters() is not None:
        assert host["disk_read_bytes_per_second"] >= 0
        assert host["disk_write_bytes_per_second"] >= 0

    snapshot = collected.snapshot
    assert snapshot is not None
    assert snapshot["platform"]["hostname"] == socket.gethostname()
    assert snapshot["platform"]["python"] == platform.python_version()
    assert snapshot["platform"]["os"] == platform.system()
    assert snapshot["platform"]["cpu_count_logical"] == psutil.cpu_count()
    assert snapshot["window_seconds"] >= MIN_WINDOW_S


async def test_disks_are_real_filesystems_only(make_context) -> None:
    collected = await system_info.PLUGIN().collect(make_context(SystemInfoConfig(), "system_info"))

    totals = by_label(collected, "disk_total_bytes", "mount")
    partitions = psutil.disk_partitions(all=True)
    pseudo = {p.mountpoint for p in partitions if p.fstype in PSEUDO_FILESYSTEMS}
    assert not set(totals) & pseudo  # no /proc, /sys, /dev/shm, snaps, overlays
    root = next((p for p in partitions if p.mountpoint == "/"), None)
    if root is not None and root.fstype not in PSEUDO_FILESYSTEMS:
        assert totals["/"] == psutil.disk_usage("/").total
    used = by_label(collected, "disk_used_bytes", "mount")
    free = by_label(collected, "disk_free_bytes", "mount")
    percent = by_label(collected, "disk_percent", "mount")
    for mount, total in totals.items():
        assert used[mount] + free[mount] <= total
        assert 0 <= percent[mount] <= 100


async def test_network_rates_cover_real_interfaces_only(make_context) -> None:
    collected = await system_info.PLUGIN().collect(make_context(SystemInfoConfig(), "system_info"))

    received = by_label(collected, "net_recv_bytes_per_second", "interface")
    sent = by_label(collected, "net_sent_bytes_per_second", "interface")
    expected = {
        name for name in psutil.net_io_counters(pernic=True) if not name.startswith(("lo", "veth"))
    }
    assert set(received) == set(sent) == expected
    assert all(rate >= 0 for rate in [*received.values(), *sent.values()])


async def test_disk_writes_show_up_in_the_next_window(make_context, tmp_path: Path) -> None:
    device = max(
        (p for p in psutil.disk_partitions(all=True) if str(tmp_path).startswith(p.mountpoint)),
        key=lambda p: len(p.mountpoint),
    )
    if device.fstype in PSEUDO_FILESYSTEMS or psutil.disk_io_counters() is None:
        pytest.skip(f"{tmp_path} is not on a disk ({device.fstype})")
    plugin = system_info.PLUGIN()
    context = make_context(SystemInfoConfig(), "system_info")
    await plugin.collect(context)

    written = 8 * 1024 * 1024
    with (tmp_path / "payload.bin").open("wb") as file:
        file.write(os.urandom(written))
        file.flush()
        os.fsync(file.fileno())
    collected = await plugin.collect(context)

    assert collected.snapshot is not None
    window = collected.snapshot["window_seconds"]
    assert window >= MIN_WINDOW_S  # a collection right after the last still averages properly
    rate = scalars(collected)["disk_write_bytes_per_second"]
    assert rate * window >= written * 0.99


class Nic(NamedTuple):
    bytes_sent: int
    bytes_recv: int


def reading(at: float, recv: int) -> CounterReading:
    return CounterReading(at=at, cpu=None, cores=[], disk_io=None, net_io={"eth0": Nic(0, recv)})


def test_rates_are_per_second_over_the_window() -> None:
    window = Window(previous=reading(10.0, 1_000), current=reading(12.0, 5_000))

    assert InterfaceWindow(window, "eth0").rate("bytes_recv") == 2_000


def test_a_counter_that_went_backwards_gives_no_rate() -> None:
    # The interface was re-created between two collections: its counters restarted at 0.
    window = Window(previous=reading(10.0, 9_000_000), current=reading(70.0, 1_000))

    assert InterfaceWindow(window, "eth0").rate("bytes_recv") is None
