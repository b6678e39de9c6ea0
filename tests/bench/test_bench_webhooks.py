"""The ``webhooks`` benchmark runs in its ``--quick`` form and reports every size it measures."""

from __future__ import annotations

import pytest

from tests.bench.test_bench_smoke import run_scenario

pytestmark = pytest.mark.slow


def test_webhooks_measures_unity_and_the_bare_loop_at_each_size() -> None:
    result = run_scenario("webhooks")
    assert {"sizes", "deliveries_per_s_at_10", "cores", "targets", "met"} <= result.keys()
    assert result["targets"] == {"deliveries_per_s_at_10": 1000}
    assert [size["endpoints"] for size in result["sizes"]] == [1, 10, 100]
    for size in result["sizes"]:
        assert size["deliveries"] > 0  # every delivery was recorded as a success
        assert size["deliveries_per_s"] > 0
        assert size["bare_per_s"] > 0
        assert "ratio" in size
