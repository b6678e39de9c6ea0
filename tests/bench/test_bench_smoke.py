"""Every benchmark scenario runs in its ``--quick`` form and prints its one JSON object.

Figures are not checked (timings belong to benchmarks, not tests): what is checked is
what ``make bench`` and a reader rely on, the exit code, a single JSON object on stdout
and the keys the scenario documents.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run_scenario(name: str, *args: str) -> dict[str, Any]:
    """``python -m bench.NAME --quick ARGS`` from the repository root; its JSON object."""
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    assert result["scenario"] == name
    return result


def test_ingest() -> None:
    result = run_scenario("ingest")
    assert {"samples_per_s", "limit_samples_per_s", "ratio", "targets", "met"} <= result.keys()
    assert result["samples"] == result["series"] * 100


def test_query_builds_its_data_set_in_the_given_cache_dir(tmp_path: Path) -> None:
    result = run_scenario("query", "--cache-dir", str(tmp_path))
    assert {"raw_24h_p50_ms", "m1_24h_p50_ms", "m1_24h_p99_ms", "targets", "met"} <= result.keys()
    assert result["cached_data_set"] is False
    assert list(tmp_path.glob("query-*.db"))


def test_rest_loads_every_hot_endpoint_and_the_bare_route() -> None:
    result = run_scenario("rest")
    assert {
        "unity_rps",
        "bare_rps",
        "ratio",
        "p50_ms",
        "p99_ms",
        "cores",
        "targets",
        "meets_targets",
    } <= result.keys()
    assert result["targets"] == {"ratio": 0.5, "p99_ms": 50}
    assert set(result["meets_targets"]) == {"ratio", "p99_ms"}
    assert set(result["endpoints"]) == {
        "/api/plugins",
        "/api/plugins/system_info",
        "/api/plugins/system_info/status",
        "/api/plugins/system_info/metrics",
        "/api/plugins/stats/summary",
    }
    for figures in result["endpoints"].values():
        assert {"rps", "p50_ms", "p99_ms", "ratio"} <= figures.keys()
        assert figures["rps"] > 0
    assert result["non_2xx"] == 0  # every answer timed was a real one
    assert result["bare_rps"] > 0


def test_ws_fanout_measures_unity_and_the_bare_server() -> None:
    result = run_scenario("ws_fanout")
    assert {"sizes", "cores", "targets", "meets_targets", "note"} <= result.keys()
    assert result["targets"] == {"p99_ms_at_1000": 50, "p99_ratio_at_5000": 1.5}
    assert set(result["meets_targets"]) == {"p99_ms_at_1000", "p99_ratio_at_5000"}
    assert [size["clients"] for size in result["sizes"]] == [100, 200]
    for size in result["sizes"]:
        assert "ratio_p99" in size
        for server in ("unity", "bare"):
            figures = size[server]
            assert {"p50_ms", "p99_ms", "delivered", "expected", "server_cpu"} <= figures.keys()
            # Clients received the broadcasts, from both servers.
            assert figures["messages_published"] > 0
            assert figures["delivered"] > 0
