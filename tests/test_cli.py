"""The ``unity`` command: what a user types and reads."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unity.cli import app
from unity.core.migrations import head_revision

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("unity ")


def test_db_upgrade_twice(tmp_path: Path) -> None:
    first = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert f"migrated from empty to {head_revision()}" in first.output
    assert (tmp_path / "unity.db").is_file()
    second = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert f"already at revision {head_revision()}" in second.output


def test_plugins_list_shows_builtins() -> None:
    result = runner.invoke(app, ["plugins", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for plugin_id in ("system_info", "http_check", "docker_monitor"):
        assert plugin_id in result.output


def test_plugins_run_system_info_prints_and_records(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["plugins", "run", "system_info", "--data-dir", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "cpu_percent" in result.output
    assert "memory_used_bytes" in result.output


def test_plugins_run_unknown_plugin(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plugins", "run", "nope", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "nope" in result.output


def test_serve_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = runner.invoke(app, ["serve", "--port", str(port), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [f"unity: port {port} on 127.0.0.1 is already in use"]


def test_serve_exits_when_the_database_cannot_be_opened(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["serve", "--port", "0", "--data-dir", str(blocker / "data")])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("unity: ")


@pytest.mark.parametrize("content", ["port = 'x'", "not toml ["])
def test_bad_config_file_is_one_clear_line(tmp_path: Path, content: str) -> None:
    config = tmp_path / "unity.toml"
    config.write_text(content)
    result = runner.invoke(app, ["db", "upgrade", "--config", str(config)])
    assert result.exit_code == 1
    assert result.output.startswith("unity: ")


def test_missing_config_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 1
    assert "config file not found" in result.output
