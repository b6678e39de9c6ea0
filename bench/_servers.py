"""Server processes the network benchmarks measure: start, wait until listening, stop.

Also what every process of those benchmarks needs: a free port, a raised descriptor
limit. The module imports little, since load generators and bare servers import it too.

Each server runs in its own process, so the load generator (another process) never
shares an event loop with what it measures. Unity and its bare counterpart run under
uvicorn with :data:`SERVE_OPTIONS`, the options ``unity serve`` passes (one worker, the
default loop and HTTP implementation: uvloop and httptools when installed).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

#: Tells a fan-out server that every client is connected: start publishing.
START_SIGNAL = signal.SIGUSR1

#: The repository root: the working directory of every child process.
ROOT = Path(__file__).resolve().parent.parent

#: What ``unity serve`` passes to ``uvicorn.run`` besides the app, host and port
#: (``src/unity/cli.py``); keep the two in step.
SERVE_OPTIONS: dict[str, Any] = {
    "log_config": None,
    "access_log": False,
    "lifespan": "on",
    "ws": "websockets-sansio",
    "timeout_graceful_shutdown": 15,
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit; returns the new soft limit.

    Thousands of WebSocket connections need as many descriptors on each side, and the
    usual soft limit (1,024) is far below that.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


class ServerProcess:
    """A server in a child process listening on ``127.0.0.1:port``; its output goes to a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        port: int,
        log_dir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_dir / f"{name}-{port}.log"
        self.env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's process id (for CPU accounting)."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._proc.pid

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and return once its port accepts connections.

        uvicorn binds only after the app's start-up completed, and the plain WebSocket
        server binds when it is ready, so an accepted connection means "ready".
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited after 20 s."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's output, for error messages."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def python_module(module: str, *args: str) -> list[str]:
    """The command line running ``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
