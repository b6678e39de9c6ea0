"""The Docker monitor against unreachable addresses and a small real Engine API server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from unity.errors import CollectionError
from unity.plugins.builtin import docker_monitor
from unity.plugins.builtin.docker_monitor import CONTAINER_STATES, DockerMonitorConfig
from unity.plugins.sdk import Collected, Context

MakeContext = Callable[..., Context[Any]]
GIB = 1024**3


def by_label(collected: Collected, name: str, label: str) -> dict[str, float]:
    assert all(sample.problem() is None for sample in collected.samples)
    return {s.labels[label]: s.value for s in collected.samples if s.name == name}


def value(collected: Collected, name: str) -> float:
    [found] = [s.value for s in collected.samples if s.name == name]
    return found


def container(cid: str, name: str, state: str) -> dict[str, Any]:
    return {
        "Id": cid * 8,
        "Names": [f"/{name}"],
        "Image": f"{name}:latest",
        "State": state,
        "Status": "Up 2 hours" if state == "running" else "Exited (0) 1 hour ago",
        "Created": 1_700_000_000,
    }


def stats(
    cpu_ns: int,
    system_ns: int,
    usage: int,
    cache: dict[str, int],
    precpu: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "cpu_stats": {
            "cpu_usage": {"total_usage": cpu_ns},
            "system_cpu_usage": system_ns,
            "online_cpus": 2,
        },
        "precpu_stats": precpu or {"cpu_usage": {"total_usage": 0}},
        "memory_stats": {"usage": usage, "limit": 2 * GIB, "stats": cache},
    }


@pytest.fixture
def engine(docker_engine):
    """An engine with two running containers, one stopped, two images, a volume, three networks."""
    web, db, job = (
        container("a1", "web", "running"),
        container("b2", "db", "running"),
        container("c3", "nightly-job", "exited"),
    )
    docker_engine.containers = [web, db, job]
    # web on cgroup v2 (inactive_file), db on cgroup v1 (total_inactive_file)
    docker_engine.stats = {
        web["Id"]: stats(
            1_000_000_000, 100_000_000_000, 300 * 1024**2, {"inactive_file": 100 * 1024**2}
        ),
        db["Id"]: stats(4_000_000_000, 100_000_000_000, 1 * GIB, {"total_inactive_file": 0}),
    }
    docker_engine.images = [
        {"Id": "sha256:1", "RepoTags": ["web:latest"], "Size": 150_000_000},
        {"Id": "sha256:2", "RepoTags": ["postgres:16"], "Size": 450_000_000},
    ]
    docker_engine.volumes = [{"Name": "pgdata", "Driver": "local"}]
    docker_engine.networks = [{"Name": "bridge"}, {"Name": "host"}, {"Name": "none"}]
    return docker_engine


async def collect(plugin, make_context: MakeContext, **config: Any) -> Collected:
    return await plugin.collect(make_context(DockerMonitorConfig(**config), "docker_monitor"))


async def test_a_missing_socket_fails_with_a_clear_message(tmp_path: Path, make_context) -> None:
    socket_path = tmp_path / "docker.sock"

    with pytest.raises(CollectionError) as caught:
        await collect(docker_monitor.PLUGIN(), make_context, base_url=f"unix://{socket_path}")

    assert str(caught.value) == (
        f"Docker engine not reachable at unix://{socket_path}: No such file or directory"
    )


async def test_a_closed_tcp_port_fails_with_a_clear_message(closed_port, make_context) -> None:
    address = f"tcp://127.0.0.1:{closed_port}"

    with pytest.raises(CollectionError) as caught:
        await collect(docker_monitor.PLUGIN(), make_context, base_url=address, timeout_s=5)

    assert str(caught.value) == f"Docker engine not reachable at {address}: Connection refused"


async def test_the_engine_is_described(engine, make_context) -> None:
    collected = await collect(docker_monitor.PLUGIN(), make_context, base_url=engine.base_url)

    assert value(collected, "docker_up") == 1
    assert value(collected, "docker_images") == 2
    assert value(collected, "docker_images_size_bytes") == 600_000_000
    assert value(collected, "docker_volumes") == 1
    assert value(collected, "docker_networks") == 3
    states = by_label(collected, "docker_containers", "state")
    assert states == {state: 0 for state in CONTAINER_STATES} | {"running": 2, "exited": 1}

    snapshot = collected.snapshot
    assert snapshot is not None
    assert snapshot["address"] == engine.base_url
    assert snapshot["engine"]["version"] == "27.3.1"
    assert snapshot["engine"]["api_version"] == "1.47"
    assert [(c["name"], c["state"], c["image"]) for c in snapshot["containers"]] == [
        ("web", "running", "web:latest"),
        ("db", "running", "db:latest"),
        ("nightly-job", "exited", "nightly-job:latest"),
    ]


async def test_container_memory_excludes_the_page_cache(engine, make_context) -> None:
    collected = await collect(docker_monitor.PLUGIN(), make_context, base_url=engine.base_url)

    memory = by_label(collected, "docker_container_memory_bytes", "container")
    assert memory == {"web": 200 * 1024**2, "db": 1 * GIB}  # the stopped job has no stats
    assert by_label(collected, "docker_container_memory_limit_bytes", "container") == {
        "web": 2 * GIB,
        "db": 2 * GIB,
    }
    assert by_label(collected, "docker_container_memory_percent", "container")["db"] == 50


async def test_container_cpu_is_averaged_since_the_previous_collection(
    engine, make_context, assert_declared
) -> None:
    plugin = docker_monitor.PLUGIN()
    first = await collect(plugin, make_context, base_url=engine.base_url)
    web, db = engine.containers[0]["Id"], engine.containers[1]["Id"]
    # In the next 2 s of system time (1 s on each of 2 CPUs): web used 0.5 s, db 2 s.
    engine.stats[web]["cpu_stats"]["cpu_usage"]["total_usage"] += 500_000_000
    engine.stats[db]["cpu_stats"]["cpu_usage"]["total_usage"] += 2_000_000_000
    for cid in (web, db):
        engine.stats[cid]["cpu_stats"]["system_cpu_usage"] += 2_000_000_000
    second = await collect(plugin, make_context, base_url=engine.base_url)

    assert_declared(docker_monitor.PLUGIN, second)

    # One-shot stats carry no previous reading: the first collection cannot know CPU use.
    assert by_label(first, "docker_container_cpu_percent", "container") == {}
    assert by_label(second, "docker_container_cpu_percent", "container") == {
        "web": pytest.approx(50.0),
        "db": pytest.approx(200.0),
    }
    assert all("one-shot=True" in query for query in engine.stats_queries)


async def test_older_engines_give_cpu_on_the_first_collection(engine, make_context) -> None:
    engine.api_version = "1.40"  # before one-shot stats; the engine fills precpu_stats itself
    web = engine.containers[0]["Id"]
    engine.stats[web]["precpu_stats"] = {
        "cpu_usage": {"total_usage": 750_000_000},
        "system_cpu_usage": 99_000_000_000,
        "online_cpus": 2,
    }

    collected = await collect(docker_monitor.PLUGIN(), make_context, base_url=engine.base_url)

    assert by_label(collected, "docker_container_cpu_percent", "container") == {
        "web": pytest.approx(50.0)
    }
    assert not any("one-shot" in query for query in engine.stats_queries)


async def test_a_container_removed_while_collecting_is_skipped(engine, make_context) -> None:
    del engine.stats[engine.containers[1]["Id"]]  # listed as running, gone by the stats call

    collected = await collect(docker_monitor.PLUGIN(), make_context, base_url=engine.base_url)

    assert set(by_label(collected, "docker_container_memory_bytes", "container")) == {"web"}
    assert by_label(collected, "docker_containers", "state")["running"] == 2


async def test_an_engine_error_fails_the_collection(engine, make_context) -> None:
    engine.failing_paths.add("/images/json")

    with pytest.raises(
        CollectionError, match=r"Docker engine at tcp://127\.0\.0\.1:\d+ failed: 500"
    ):
        await collect(docker_monitor.PLUGIN(), make_context, base_url=engine.base_url)


async def test_the_default_address_comes_from_docker_host(
    engine, make_context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", engine.base_url)
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)

    collected = await collect(docker_monitor.PLUGIN(), make_context)

    assert collected.snapshot is not None
    assert collected.snapshot["address"] == engine.base_url
    assert value(collected, "docker_up") == 1
