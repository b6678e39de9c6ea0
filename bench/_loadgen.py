"""The load generator of the network benchmarks, run in a process of its own.

    python -m bench._loadgen http --plan '{"connections": 64, "phases": [...], ...}'
    python -m bench._loadgen ws --url ws://127.0.0.1:PORT/ws/metrics --clients 1000 \\
        --duration 10 --server-pid PID

It writes one JSON object per line on stdout: ``{"event": "progress", ...}`` while it
works and ``{"event": "result", ...}`` at the end; :func:`run_loadgen` starts it from a
scenario and returns the result. The CPU time of the measured server (``--server-pid``,
read with psutil) and of the generator itself are taken over the measured window only.
In ``ws`` mode, the generator sends the server ``START_SIGNAL`` once every client is
connected: the fan-out servers publish from then on.

Both clients are asyncio protocols on uvloop with no task per connection: HTTP/1.1
keep-alive parsed by httptools (uvicorn's parser), and a minimal WebSocket client that
parses server frames itself and reads a message's ``timestamp`` and ``seq`` off its end.
On a two-core machine whatever the client spends is taken from the server it measures,
and general-purpose clients spend several times more per request or message (measured
per message: the ``websockets`` sans-I/O parser plus a full JSON decode ~13 us, this
client ~4 us).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson
import psutil
import uvloop
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.utils import accept_key, generate_key

from bench._servers import ROOT, START_SIGNAL, python_module, raise_fd_limit
from bench._stats import median, percentile

#: WebSocket handshakes in flight at once; more overflows small accept backlogs.
CONNECT_CONCURRENCY = 100
#: How long one opening handshake may take.
HANDSHAKE_TIMEOUT_S = 60.0
#: After the window, how long delivery of in-window messages may stall before we stop waiting.
SETTLE_S = 0.5
#: ... and how long we wait for them at most.
MAX_GRACE_S = 15.0

Emit = Callable[[dict[str, Any]], None]


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _latency_figures(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(median(seconds) * 1000, 3),
        "p99_ms": round(percentile(seconds, 99) * 1000, 3),
        "max_ms": round(max(seconds) * 1000, 3),
    }


class _CpuWindow:
    """CPU seconds of the server and of this process between ``begin`` and ``end``."""

    def __init__(self, server_pid: int) -> None:
        self._server = psutil.Process(server_pid)
        self._own = psutil.Process()
        self._start: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.figures: dict[str, float] = {}

    def begin(self) -> None:
        self._start = (time.perf_counter(), _cpu_seconds(self._server), _cpu_seconds(self._own))

    def end(self) -> None:
        wall = time.perf_counter() - self._start[0]
        self.figures = {
            "server_cpu": round((_cpu_seconds(self._server) - self._start[1]) / wall, 3),
            "loadgen_cpu": round((_cpu_seconds(self._own) - self._start[2]) / wall, 3),
        }


# --- HTTP ------------------------------------------------------------------------------------


@dataclass
class _HttpRun:
    """What the connections of one phase share."""

    requests: list[bytes]
    measuring: bool = False
    stopped: bool = False
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    lost: int = 0


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection sending the next request as soon as a response is complete."""

    def __init__(self, run: _HttpRun, offset: int) -> None:
        self._run = run
        self._next = offset
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self._send()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._run.stopped:
            self._run.lost += 1

    def on_message_complete(self) -> None:
        run = self._run
        if run.measuring:
            run.latencies.append(time.perf_counter() - self._sent_at)
            run.statuses[self._parser.get_status_code()] += 1
        if not run.stopped:
            self._send()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _send(self) -> None:
        assert self._transport is not None
        requests = self._run.requests
        request = requests[self._next % len(requests)]
        self._next += 1
        self._sent_at = time.perf_counter()
        self._transport.write(request)


def _request(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _http_phase(
    phase: dict[str, Any], *, connections: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    host, port = phase["host"], int(phase["port"])
    headers: dict[str, str] = phase.get("headers", {})
    run = _HttpRun([_request(host, port, path, headers) for path in phase["paths"]])
    loop = asyncio.get_running_loop()
    opened = await asyncio.gather(
        *(
            loop.create_connection(partial(_HttpConnection, run, i), host, port)
            for i in range(connections)
        )
    )
    clients = [protocol for _, protocol in opened]
    cpu = _CpuWindow(int(phase["pid"]))
    try:
        await asyncio.sleep(warmup_s)
        cpu.begin()
        run.measuring = True
        began = time.perf_counter()
        await asyncio.sleep(duration_s)
        run.measuring = False
        elapsed = time.perf_counter() - began
        cpu.end()
    finally:
        run.stopped = True
        for client in clients:
            client.close()
    count = len(run.latencies)
    return {
        "name": phase["name"],
        "paths": phase["paths"],
        "requests": count,
        "rps": round(count / elapsed, 1),
        **_latency_figures(run.latencies),
        "statuses": {str(status): n for status, n in sorted(run.statuses.items())},
        "non_2xx": sum(n for status, n in run.statuses.items() if not 200 <= status < 300),
        "connections_lost": run.lost,
        **cpu.figures,
    }


async def http_main(plan: dict[str, Any], emit: Emit) -> dict[str, Any]:
    """Load each phase of ``plan`` in turn with ``plan["connections"]`` connections."""
    results = []
    for phase in plan["phases"]:
        result = await _http_phase(
            phase,
            connections=int(plan["connections"]),
            warmup_s=float(plan["warmup_s"]),
            duration_s=float(plan["duration_s"]),
        )
        results.append(result)
        emit({"event": "progress", "phase": phase["name"], "rps": result["rps"]})
    return {"connections": plan["connections"], "phases": results}


# --- WebSocket -------------------------------------------------------------------------------


#: The end of every ``metrics_update`` both servers send (orjson keeps key order).
_TAIL = re.compile(rb'"timestamp":"([^"]+)","seq":(\d+)}')
_PREFIX = b'{"type":"metrics_update",'


@dataclass
class _WsRun:
    """What the clients of one run share: the window and what arrived in it."""

    start: float | None = None
    end: float | None = None
    latencies: list[float] = field(default_factory=list)
    seqs: set[int] = field(default_factory=set)
    lag_dropped: int = 0
    closed: int = 0
    stopping: bool = False

    def record(self, received_at: float, data: bytes) -> None:
        """Account for one message: a ``metrics_update`` stamped inside the window, or a lag."""
        # Fast path: the timestamp and seq are the message's last two keys, so reading them
        # off its end avoids decoding the metrics (most of the bytes) 50,000 times a second.
        tail = data.rfind(b',"timestamp":"') if data.startswith(_PREFIX) else -1
        match = _TAIL.fullmatch(data, tail + 1) if tail > 0 else None
        if match is not None:
            stamp, seq = match[1].decode(), int(match[2])
        else:
            message = orjson.loads(data)
            kind = message.get("type")
            if kind == "lag":
                self.lag_dropped += int(message.get("dropped", 0))
            if kind != "metrics_update":
                return
            stamp, seq = message["timestamp"], int(message["seq"])
        if self.start is None:
            return
        sent_at = datetime.fromisoformat(stamp).timestamp()
        if sent_at < self.start or (self.end is not None and sent_at >= self.end):
            return
        self.latencies.append(received_at - sent_at)
        self.seqs.add(seq)


class _WsClient(asyncio.Protocol):
    """One WebSocket client (RFC 6455) that reads what the server sends.

    The opening handshake is checked (status 101, ``Sec-WebSocket-Accept``); server frames
    are parsed here, pings answered with pongs and a close with a close. No extension is
    offered, so frames are never compressed. Control frames it sends are built by
    ``websockets`` (masked, as a client must).
    """

    def __init__(self, run: _WsRun, url: str) -> None:
        self._run = run
        self._url = urlsplit(url)
        self._key = generate_key()
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._fragments: list[bytes] = []
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        target = self._url.path or "/"
        if self._url.query:
            target += f"?{self._url.query}"
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {self._url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self._transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        received_at = time.time()  # wall clock: the servers stamp messages with it too
        buffer = self._buffer + data if self._buffer else data
        if not self.opened.done():
            buffer = self._handshake(buffer)
            if not self.opened.done() or self.opened.exception() is not None:
                self._buffer = buffer
                return
        self._buffer = self._frames(received_at, buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        elif not self._run.stopping:
            self._run.closed += 1

    def close(self) -> None:
        """Send a close frame (normal closure) and close the connection."""
        if self._transport is None or self._transport.is_closing():
            return
        if self.opened.done() and self.opened.exception() is None:
            self._send(Opcode.CLOSE, Close(CloseCode.NORMAL_CLOSURE, "").serialize())
        self._transport.close()

    def _handshake(self, buffer: bytes) -> bytes:
        """Consume the handshake response once complete; returns the bytes after it."""
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return buffer
        status, *lines = buffer[:end].decode("latin-1").split("\r\n")
        headers = dict(line.split(":", 1) for line in lines if ":" in line)
        headers = {name.strip().lower(): value.strip() for name, value in headers.items()}
        if status.split(" ", 2)[1:2] != ["101"]:
            self._fail(f"handshake answered {status!r}")
        elif headers.get("sec-websocket-accept") != accept_key(self._key):
            self._fail("handshake: wrong Sec-WebSocket-Accept")
        else:
            self.opened.set_result(None)
        return buffer[end + 4 :]

    def _frames(self, received_at: float, buffer: bytes) -> bytes:
        """Handle every complete frame in ``buffer``; returns the incomplete rest."""
        pos, size = 0, len(buffer)
        while size - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                length, head = int.from_bytes(buffer[pos + 2 : pos + 4]), 4
            elif length == 127:
                length, head = int.from_bytes(buffer[pos + 2 : pos + 10]), 10
            if second & 0x80:  # servers never mask; RFC 6455 5.1 says fail the connection
                self._fail("masked frame from the server")
                return b""
            end = pos + head + length
            if size < end or size - pos < head:
                break
            self._frame(received_at, first, buffer[pos + head : end])
            pos = end
        return buffer[pos:]

    def _frame(self, received_at: float, first: int, payload: bytes) -> None:
        fin, opcode = first & 0x80, first & 0x0F
        if opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            if fin and not self._fragments:
                self._run.record(received_at, payload)
            elif fin:
                self._run.record(received_at, b"".join([*self._fragments, payload]))
                self._fragments.clear()
            else:
                self._fragments.append(payload)
        elif opcode == Opcode.PING:
            self._send(Opcode.PONG, payload)
        elif opcode == Opcode.CLOSE:
            self._send(Opcode.CLOSE, payload[:2])
            assert self._transport is not None
            self._transport.close()

    def _send(self, opcode: Opcode, payload: bytes) -> None:
        assert self._transport is not None
        self._transport.write(Frame(opcode, payload).serialize(mask=True))

    def _fail(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(reason))
        assert self._transport is not None
        self._transport.close()


async def _connect(url: str, count: int, run: _WsRun, emit: Emit) -> list[_WsClient]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    clients: list[_WsClient] = []
    step = max(count // 20, 1)

    async def one() -> None:
        async with gate:
            _, client = await loop.create_connection(lambda: _WsClient(run, url), host, port)
            clients.append(client)
            await asyncio.wait_for(client.opened, HANDSHAKE_TIMEOUT_S)
            if len(clients) % step == 0:
                emit({"event": "progress", "connected": len(clients)})

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


async def ws_main(
    url: str, *, clients: int, duration_s: float, warmup_s: float, server_pid: int, emit: Emit
) -> dict[str, Any]:
    """Connect ``clients`` clients, tell the server to publish, measure delivery for ``duration_s``."""
    fd_limit = raise_fd_limit()
    run = _WsRun()
    began = time.perf_counter()
    connected = await _connect(url, clients, run, emit)
    connect_s = time.perf_counter() - began
    cpu = _CpuWindow(server_pid)
    try:
        os.kill(server_pid, START_SIGNAL)  # every client is here: the server starts publishing
        await asyncio.sleep(warmup_s)
        emit({"event": "progress", "measuring": duration_s})
        cpu.begin()
        run.start = time.time()
        await asyncio.sleep(duration_s)
        run.end = time.time()
        cpu.end()
        # Messages stamped inside the window may still be on their way: wait while they
        # keep arriving (a backlogged server), up to MAX_GRACE_S.
        deadline = time.monotonic() + MAX_GRACE_S
        seen = -1
        while len(run.latencies) != seen and time.monotonic() < deadline:
            seen = len(run.latencies)
            await asyncio.sleep(SETTLE_S)
    finally:
        run.stopping = True
        for client in connected:
            client.close()
    # seq grows by one per message, so the range counts even those no client received.
    published = max(run.seqs) - min(run.seqs) + 1 if run.seqs else 0
    return {
        "clients": clients,
        "connect_s": round(connect_s, 2),
        "duration_s": duration_s,
        "messages_published": published,
        "delivered": len(run.latencies),
        "missed": published * clients - len(run.latencies),
        **_latency_figures(run.latencies),
        "lag_dropped": run.lag_dropped,
        "closed_by_server": run.closed,
        "fd_limit": fd_limit,
        **cpu.figures,
    }


# --- process boundary ------------------------------------------------------------------------


def run_loadgen(args: list[str], on_event: Emit | None = None) -> dict[str, Any]:
    """Run ``python -m bench._loadgen ARGS`` and return its result (progress goes to ``on_event``)."""
    proc = subprocess.Popen(
        python_module("bench._loadgen", *args), cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    result: dict[str, Any] | None = None
    with proc:
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("event") == "result":
                result = event
            elif on_event is not None:
                on_event(event)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"the load generator failed (exit code {proc.returncode})")
    del result["event"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="mode", required=True)
    http = sub.add_parser("http", help="HTTP/1.1 keep-alive load, phase after phase")
    http.add_argument(
        "--plan", required=True, help="JSON: connections, warmup_s, duration_s, phases"
    )
    ws = sub.add_parser("ws", help="WebSocket clients measuring delivery latency")
    ws.add_argument("--url", required=True)
    ws.add_argument("--clients", type=int, required=True)
    ws.add_argument("--duration", type=float, required=True)
    ws.add_argument("--warmup", type=float, default=1.0)
    ws.add_argument("--server-pid", type=int, required=True)
    args = p.parse_args()
    if args.mode == "http":
        result = uvloop.run(http_main(json.loads(args.plan), _emit))
    else:
        result = uvloop.run(
            ws_main(
                args.url,
                clients=args.clients,
                duration_s=args.duration,
                warmup_s=args.warmup,
                server_pid=args.server_pid,
                emit=_emit,
            )
        )
    _emit({"event": "result", **result})


if __name__ == "__main__":
    main()
