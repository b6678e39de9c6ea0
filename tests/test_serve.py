"""A real ``unity serve`` process: health, collection into SQLite, and surviving kill -9."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import httpx
import pytest

from tests.server import UnityProcess, wait_for

pytestmark = pytest.mark.slow


def _count(db: Path, sql: str, *args: object) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(sql, args).fetchone()[0])


def test_unity_serve_is_healthy_and_collects_system_info(tmp_path: Path) -> None:
    server = UnityProcess(tmp_path / "data", test_plugins=False)
    server.start()
    try:
        body = httpx.get(f"{server.url}/health").json()
        assert body["status"] == "healthy"
        assert body["scheduler"] == "running"
        assert body["database"] == "ok"
        db = tmp_path / "data" / "unity.db"
        assert db.is_file()
        executions = "SELECT count(*) FROM plugin_executions WHERE plugin_id='system_info' AND status='success'"
        wait_for(lambda: _count(db, executions) >= 1, 30, "a system_info execution")
        cpu = "SELECT count(*) FROM series WHERE plugin_id='system_info' AND name='cpu_percent'"
        assert _count(db, cpu) == 1
        assert _count(db, "SELECT count(*) FROM samples") > 20
    finally:
        # uvicorn re-raises SIGTERM after its graceful shutdown: the status is -15
        assert server.stop() in (0, -15)
    assert '"unity stopped"' in server.log()


def test_kill_9_during_ingest_loses_no_committed_sample(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = data / "unity.db"
    server = UnityProcess(
        data, enable={"firehose": '{"collection_interval": 1, "series": 200, "per_series": 100}'}
    )
    server.start()
    success_sql = (
        "SELECT count(*) FROM plugin_executions WHERE plugin_id='firehose' AND status='success'"
    )
    wait_for(lambda: _count(db, success_sql) >= 3, 60, "three firehose executions")
    server.kill9()

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        executions = conn.execute(
            "SELECT e.instance_id, e.started_at, e.metrics_count FROM plugin_executions e "
            "WHERE e.plugin_id='firehose' AND e.status='success'"
        ).fetchall()
        assert len(executions) >= 3
        for instance_hex, started_at, metrics_count in executions:
            start_ms = int(
                conn.execute(
                    "SELECT CAST((julianday(?) - 2440587.5) * 86400000 AS INTEGER)", (started_at,)
                ).fetchone()[0]
            )
            stored = conn.execute(
                "SELECT count(*) FROM samples s JOIN series r ON r.id = s.series_id "
                "WHERE r.source_id = ? AND s.ts BETWEEN ? AND ?",
                (_uuid_text(instance_hex), start_ms - 2, start_ms + 900),
            ).fetchone()[0]
            # samples are committed before their execution is recorded: all of them are there
            assert stored == metrics_count == 20_000

    # the database opens cleanly and Unity starts again on it
    again = UnityProcess(data)
    again.start()
    try:
        assert httpx.get(f"{again.url}/health").json()["database"] == "ok"
    finally:
        again.stop()


def _uuid_text(value: str) -> str:
    return str(uuid.UUID(value))
