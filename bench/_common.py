"""Shared pieces of the benchmark scenarios: output, timing, progress, SQLite set-up.

Each scenario prints exactly one JSON object on stdout; progress and notes go to
stderr through Rich, so ``python -m bench.x | jq`` works.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

# Re-exported: the scenarios take them from here.
from bench._stats import median as median
from bench._stats import percentile as percentile
from unity.core.db import Database
from unity.core.migrations import upgrade

#: Where scenarios keep reusable data (gitignored).
CACHE_DIR = Path(__file__).resolve().parent / ".cache"

#: Connection settings copied from a Unity connection onto bare sqlite3 baselines.
COPIED_PRAGMAS = ("journal_mode", "synchronous", "cache_size", "temp_store", "wal_autocheckpoint")

console = Console(stderr=True)


def emit(result: dict[str, Any]) -> None:
    """Print the scenario's one JSON object on stdout."""
    sys.stdout.write(json.dumps(result, sort_keys=False) + "\n")
    sys.stdout.flush()


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every scenario takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a small run (seconds), for smoke tests")
    p.add_argument("--seed", type=int, default=1, help="random seed for generated values")
    return p


def progress() -> Progress:
    """A Rich progress display on stderr (hidden when stderr is not a terminal)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """Measures the block: the yielded list holds the elapsed seconds afterwards."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


def settle() -> None:
    """Collect garbage and freeze what exists, before timing.

    Long-lived set-up objects (generated samples, imported modules) then stay out of
    the collector's way, as in a server that calls ``gc.freeze()`` after start-up;
    otherwise a full collection lands in random timed calls (50-70 ms p99 spikes).
    """
    gc.collect()
    gc.freeze()


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def remove_sqlite(path: Path) -> None:
    """Delete a SQLite database with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def migrated(path: Path) -> Database:
    """A Unity database at ``path`` with the current schema."""
    database = Database(sqlite_url(path))
    await upgrade(database)
    return database


async def unity_pragmas(database: Database) -> dict[str, Any]:
    """The connection settings Unity's own SQLite connections run with."""
    values: dict[str, Any] = {}
    async with database.engine.connect() as conn:
        for name in COPIED_PRAGMAS:
            values[name] = (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
    return values


def bare_connection(path: Path, pragmas: dict[str, Any]) -> sqlite3.Connection:
    """A plain sqlite3 connection (manual transactions) with ``pragmas`` applied."""
    conn = sqlite3.connect(path, isolation_level=None)
    for name, value in pragmas.items():
        conn.execute(f"PRAGMA {name} = {value}")
    return conn


def run(main: Any) -> None:
    """Run an async scenario entry point."""
    asyncio.run(main())
