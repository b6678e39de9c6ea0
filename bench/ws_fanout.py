"""WebSocket fan-out: 1,000 and 5,000 ``/ws/metrics`` clients, against a bare broadcast loop.

For each client count, two servers run in turn, each in a fresh process:

* Unity (``bench._fanout_server``): the app as ``unity serve`` builds and serves
  it, plus a bench-only task publishing a ``system_info``-sized ``metrics.updated``
  event on Unity's event bus ``--rate`` times a second; the live hub turns each into a
  ``metrics_update`` message for every client (bus subscription, queue, filter, send).
* the limit (``bench._bare_ws``): a plain ``websockets`` server whose one loop
  sends the same JSON to every connected client with ``broadcast``, as often.

A separate load-generator process (``bench._loadgen ws``) connects the clients, then
signals the server to start publishing (so fan-out is measured to a steady set of
clients), waits a second, and for ``--duration`` seconds takes every message stamped
inside the window. Delivery latency is its receive time minus the wall-clock
``timestamp`` the server stamped it with at publication (same machine, same clock).
``delivered``/``expected``
counts those messages against clients x the messages the requested rate makes (a
saturated server publishes less often: ``published_per_s``). Server CPU is the server
process's CPU time over the window divided by its length (1.0 = a core), and per
delivered message in ``server_cpu_us_per_delivery``.

On two cores the server and the load generator compete; at 5,000 clients the load
generator needs most of a core by itself (``loadgen_cpu``), and the time it takes to
read 5,000 messages is part of both servers' latencies.
"""

from __future__ import annotations

import os
import tempfile
from argparse import Namespace
from pathlib import Path
from typing import Any

from bench._common import console, emit, parser, progress
from bench._loadgen import Emit, run_loadgen
from bench._servers import ServerProcess, free_port, python_module, raise_fd_limit
from unity.auth.service import ADMIN_KEY_FILE

TARGETS = {"p99_ms_at_1000": 50, "p99_ratio_at_5000": 1.5}
PATH = "/ws/metrics"


def _server(kind: str, folder: Path, rate: float) -> ServerProcess:
    port = free_port()
    args = ["--port", str(port), "--rate", str(rate)]
    if kind == "unity":
        argv = python_module(
            "bench._fanout_server", *args, "--data-dir", str(_data_dir(folder, port))
        )
    else:
        argv = python_module("bench._bare_ws", *args)
    return ServerProcess(
        f"fanout-{kind}", argv, port=port, log_dir=folder, env={"UNITY_LOG_FORMAT": "json"}
    )


def _data_dir(folder: Path, port: int) -> Path:
    return folder / f"data-{port}"


def _url(server: ServerProcess, kind: str, folder: Path) -> str:
    url = f"ws://127.0.0.1:{server.port}{PATH}"
    if kind == "unity":
        # Unity's clients authenticate, with the admin key its first start wrote.
        # WebSocket connections are not rate limited, so that key serves every client.
        key = (_data_dir(folder, server.port) / ADMIN_KEY_FILE).read_text().strip()
        url += f"?token={key}"
    return url


def _measure(
    kind: str, clients: int, args: Namespace, folder: Path, on_event: Emit
) -> dict[str, Any]:
    """Start a ``kind`` server, connect ``clients`` clients, stop it; what the clients measured."""
    server = _server(kind, folder, args.rate)
    with server:
        try:
            return run_loadgen(
                [
                    "ws",
                    "--url",
                    _url(server, kind, folder),
                    "--clients",
                    str(clients),
                    "--duration",
                    str(args.duration),
                    "--warmup",
                    str(args.warmup),
                    "--server-pid",
                    str(server.pid),
                ],
                on_event=on_event,
            )
        except RuntimeError:
            console.log(f"{server.name} log:\n{server.log_tail()}")
            raise


def _with_rates(
    figures: dict[str, Any], clients: int, rate: float, duration: float
) -> dict[str, Any]:
    """Add what the window should have carried at ``rate`` and the server CPU per delivery.

    A saturated server publishes less often than asked (its publisher shares the loop),
    so ``expected`` counts the messages of the requested rate, not of the achieved one.
    """
    expected = clients * round(rate * duration)
    delivered = figures["delivered"]
    return {
        **figures,
        "published_per_s": round(figures["messages_published"] / duration, 2),
        "expected": expected,
        "delivered_ratio": round(delivered / expected, 4),
        "server_cpu_us_per_delivery": (
            round(figures["server_cpu"] * duration * 1e6 / delivered, 1) if delivered else None
        ),
    }


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--clients", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds after connecting")
    p.add_argument("--rate", type=float, default=10.0, help="messages per second")
    args = p.parse_args()
    if args.quick:
        args.clients, args.duration, args.warmup = [100, 200], 2.0, 0.5
    fd_limit = raise_fd_limit()

    sizes: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="unity-bench-ws-") as tmp, progress() as bar:
        folder = Path(tmp)
        for clients in args.clients:
            result: dict[str, Any] = {"clients": clients}
            for kind in ("unity", "bare"):
                task = bar.add_task(f"{kind}: {clients} clients", total=clients)

                def advance(event: dict[str, Any], task: Any = task) -> None:
                    if "connected" in event:
                        bar.update(task, completed=event["connected"])

                figures = _measure(kind, clients, args, folder, advance)
                bar.remove_task(task)
                del figures["clients"]
                result[kind] = _with_rates(figures, clients, args.rate, args.duration)
                console.log(
                    f"{kind}: {clients} clients, p50 {figures['p50_ms']} ms, "
                    f"p99 {figures['p99_ms']} ms, server CPU {figures['server_cpu']}"
                )
            unity_p99, bare_p99 = result["unity"]["p99_ms"], result["bare"]["p99_ms"]
            result["ratio_p99"] = (
                round(unity_p99 / bare_p99, 3) if unity_p99 is not None and bare_p99 else None
            )
            sizes.append(result)

    small, large = sizes[0], sizes[-1]
    small_p99 = small["unity"]["p99_ms"]
    emit(
        {
            "scenario": "ws_fanout",
            "rate_per_s": args.rate,
            "duration_s": args.duration,
            "cores": os.cpu_count(),
            "fd_limit": fd_limit,
            "sizes": sizes,
            "limit": (
                "a plain websockets server on uvloop broadcasting the same JSON to every "
                "client from one loop at the same rate"
            ),
            "loadgen": (
                "one separate process (asyncio + uvloop, a minimal RFC 6455 client per "
                "connection, no task per connection)"
            ),
            "note": (
                f"{os.cpu_count()} cores shared by the server and the load generator; at "
                "5,000 clients the load generator itself needs most of a core "
                "(loadgen_cpu), and its reading time is part of both latencies"
            ),
            "targets": TARGETS,
            "target_sizes": {
                "p99_ms_at_1000": small["clients"],
                "p99_ratio_at_5000": large["clients"],
            },
            "meets_targets": {
                "p99_ms_at_1000": small_p99 is not None and small_p99 <= TARGETS["p99_ms_at_1000"],
                "p99_ratio_at_5000": large["ratio_p99"] is not None
                and large["ratio_p99"] <= TARGETS["p99_ratio_at_5000"],
            },
        }
    )


if __name__ == "__main__":
    main()
