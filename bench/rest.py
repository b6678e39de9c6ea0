"""REST: Unity's hot read endpoints at 64 connections, against a bare FastAPI route.

Unity runs as ``unity serve`` (a child process: uvicorn, one worker) on a fresh SQLite
data dir where ``system_info`` is enabled and has collected ``--collections`` times, so
the endpoints answer with real content; its scheduler keeps collecting while it is
loaded. The limit is one FastAPI route answering a small JSON object
(``bench._bare_http``), in another process under the same uvicorn options.

A separate load-generator process (``bench._loadgen http``) keeps 64 keep-alive
connections busy, each sending its next request as soon as an answer is complete, and
after a warm-up counts answers and their latencies for ``--duration`` seconds per phase:
the bare route; the five endpoints in turn on every connection (the mix: ``unity_rps``,
``ratio`` and the latencies the targets apply to); each endpoint alone; the bare route
again. The limit is the better of the two bare phases.

The machine's cores are shared: the server, the load generator (and anything else
running) compete for them, so figures from a two-core machine are a floor.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench._bare_http import PATH as BARE_PATH
from bench._common import console, emit, parser, progress
from bench._loadgen import run_loadgen
from bench._servers import ServerProcess, free_port, python_module
from unity.auth.service import ADMIN_KEY_FILE
from unity.components import build_components, close_components
from unity.config import load_settings
from unity.core.logs import configure_logging

TARGETS = {"ratio": 0.5, "p99_ms": 50}
PLUGIN_ID = "system_info"
TENANT_ID = "default"
ENDPOINTS = (
    "/api/plugins",
    f"/api/plugins/{PLUGIN_ID}",
    f"/api/plugins/{PLUGIN_ID}/status",
    f"/api/plugins/{PLUGIN_ID}/metrics",
    "/api/plugins/stats/summary",
)


async def _collect(data_dir: Path, collections: int) -> int:
    """Enable ``system_info`` in a new database at ``data_dir`` and run it ``collections`` times.

    Returns the number of samples stored.
    """
    configure_logging("console", "WARNING")  # stdout carries the result alone
    settings = load_settings(None, data_dir=data_dir, autoenable_plugins=[PLUGIN_ID])
    components = await build_components(settings, with_scheduler=False)
    try:
        instance = await components.plugins.set_enabled(
            PLUGIN_ID, tenant_id=TENANT_ID, enabled=True
        )
        for _ in range(collections):
            result = await components.pipeline.execute(instance)
            if not result.success:
                raise RuntimeError(f"{PLUGIN_ID} failed to collect: {result.error}")
        return await components.store.count_samples()
    finally:
        await close_components(components)


def _bench_key(base: str, data_dir: Path) -> dict[str, str]:
    """Headers carrying a read-only key created for this run, with a limit it cannot reach.

    The admin key a first start writes falls under the default per-key limit (600 a
    minute), which a load test exhausts in a fraction of a second and then times 429s.
    The rate limiter still runs on every request, as it does for any key.
    """
    admin = (data_dir / ADMIN_KEY_FILE).read_text().strip()
    response = httpx.post(
        f"{base}/api/keys",
        json={
            "name": "bench",
            "scopes": ["plugins:read", "metrics:read"],
            "rate_limit_per_minute": 10_000_000,
        },
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    )
    if response.status_code != 201:
        raise RuntimeError(f"POST /api/keys: {response.status_code} {response.text[:300]}")
    return {"Authorization": f"Bearer {response.json()['key']}"}


def _check(base: str, paths: tuple[str, ...], headers: dict[str, str]) -> None:
    """Fail before loading when an endpoint does not answer 200 (we would time errors)."""
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for path in paths:
            response = client.get(path)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")


def _figures(phase: dict[str, Any], limit_rps: float) -> dict[str, Any]:
    return {
        "rps": phase["rps"],
        "p50_ms": phase["p50_ms"],
        "p99_ms": phase["p99_ms"],
        "ratio": round(phase["rps"] / limit_rps, 3),
        "non_2xx": phase["non_2xx"],
        "server_cpu": phase["server_cpu"],
        "loadgen_cpu": phase["loadgen_cpu"],
    }


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each phase")
    p.add_argument("--collections", type=int, default=5, help="system_info runs before loading")
    args = p.parse_args()
    if args.quick:
        args.duration, args.warmup, args.collections = 1.0, 0.25, 2

    with tempfile.TemporaryDirectory(prefix="unity-bench-rest-") as tmp:
        folder = Path(tmp)
        data_dir = folder / "data"
        console.log(f"rest: {PLUGIN_ID} collecting {args.collections} times into {data_dir}")
        samples = asyncio.run(_collect(data_dir, args.collections))
        unity_port, bare_port = free_port(), free_port()
        unity = ServerProcess(
            "unity",
            python_module("unity", "serve", "--port", str(unity_port), "--data-dir", str(data_dir)),
            port=unity_port,
            log_dir=folder,
            env={"UNITY_LOG_FORMAT": "json"},
        )
        bare = ServerProcess(
            "bare",
            python_module("bench._bare_http", "--port", str(bare_port)),
            port=bare_port,
            log_dir=folder,
        )
        with unity, bare:
            base = f"http://127.0.0.1:{unity_port}"
            headers = _bench_key(base, data_dir)
            _check(base, ENDPOINTS, headers)

            def phase(name: str, server: ServerProcess, paths: list[str]) -> dict[str, Any]:
                return {
                    "name": name,
                    "host": "127.0.0.1",
                    "port": server.port,
                    "paths": paths,
                    "pid": server.pid,
                    "headers": headers if server is unity else {},
                }

            phases = [
                phase("bare", bare, [BARE_PATH]),
                phase("mix", unity, list(ENDPOINTS)),
                *(phase(path, unity, [path]) for path in ENDPOINTS),
                phase("bare-again", bare, [BARE_PATH]),
            ]
            plan = {
                "connections": args.connections,
                "warmup_s": args.warmup,
                "duration_s": args.duration,
                "phases": phases,
            }
            console.log(
                f"{len(phases)} phases x {args.duration:g}s at {args.connections} connections"
            )
            with progress() as bar:
                task = bar.add_task("loading", total=len(phases))
                result = run_loadgen(
                    ["http", "--plan", json.dumps(plan)], on_event=lambda _: bar.advance(task)
                )

    done = {ph["name"]: ph for ph in result["phases"]}
    limit = max((done["bare"], done["bare-again"]), key=lambda ph: float(ph["rps"]))
    mix = done["mix"]
    endpoints = {path: _figures(done[path], limit["rps"]) for path in ENDPOINTS}
    ratio = mix["rps"] / limit["rps"]
    out: dict[str, Any] = {
        "scenario": "rest",
        "connections": args.connections,
        "duration_s": args.duration,
        "cores": os.cpu_count(),
        "samples_stored": samples,
        "unity_rps": mix["rps"],
        "p50_ms": mix["p50_ms"],
        "p99_ms": mix["p99_ms"],
        "bare_rps": limit["rps"],
        "bare_p50_ms": limit["p50_ms"],
        "bare_p99_ms": limit["p99_ms"],
        "server_cpu": mix["server_cpu"],
        "bare_server_cpu": limit["server_cpu"],
        "ratio": round(ratio, 3),
        "endpoints": endpoints,
        "min_endpoint_ratio": min(e["ratio"] for e in endpoints.values()),
        "max_endpoint_p99_ms": max(e["p99_ms"] for e in endpoints.values()),
        "bare_runs_rps": [done["bare"]["rps"], done["bare-again"]["rps"]],
        "non_2xx": sum(ph["non_2xx"] for ph in result["phases"]),
        "limit": (
            f"GET {BARE_PATH}: one FastAPI route answering a small JSON object, in its own "
            "process under the uvicorn options of unity serve (one worker)"
        ),
        "loadgen": (
            "a separate process: asyncio + uvloop + httptools, keep-alive connections, "
            "next request on each answer"
        ),
        "note": (
            f"{os.cpu_count()} cores shared by the server, the load generator and anything "
            "else running; server_cpu/loadgen_cpu are in cores"
        ),
        "targets": TARGETS,
        "meets_targets": {
            "ratio": ratio >= TARGETS["ratio"],
            "p99_ms": mix["p99_ms"] <= TARGETS["p99_ms"],
        },
    }
    emit(out)


if __name__ == "__main__":
    main()
