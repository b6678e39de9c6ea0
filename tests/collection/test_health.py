"""The health state machine: thresholds a user relies on when reading a plugin's status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from unity.collection.health import Health, HealthPolicy

POLICY = HealthPolicy(degraded_after=2, failing_after=5, stale_after_intervals=3)


def test_errors_walk_healthy_to_degraded_to_failing() -> None:
    state = Health.HEALTHY
    seen = []
    for streak in range(1, 7):
        state = POLICY.after_failure(state, streak)
        seen.append(state)
    assert seen == [
        Health.HEALTHY,
        Health.DEGRADED,
        Health.DEGRADED,
        Health.DEGRADED,
        Health.FAILING,
        Health.FAILING,
    ]


@pytest.mark.parametrize("start", list(Health))
def test_success_with_samples_is_healthy_from_anywhere(start: Health) -> None:
    assert POLICY.after_success(start, produced_samples=True) is Health.HEALTHY


def test_success_without_samples_does_not_end_staleness() -> None:
    assert POLICY.after_success(Health.STALE, produced_samples=False) is Health.STALE
    assert POLICY.after_success(Health.DEGRADED, produced_samples=False) is Health.HEALTHY


def test_single_error_keeps_unknown() -> None:
    assert POLICY.after_failure(Health.UNKNOWN, 1) is Health.UNKNOWN


def test_stale_after_three_intervals_only_for_healthy_or_unknown() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    last = now - timedelta(seconds=181)
    assert POLICY.is_stale(Health.HEALTHY, last_data=last, interval_s=60, now=now)
    assert POLICY.is_stale(Health.UNKNOWN, last_data=last, interval_s=60, now=now)
    assert not POLICY.is_stale(
        Health.HEALTHY, last_data=now - timedelta(seconds=179), interval_s=60, now=now
    )
    assert not POLICY.is_stale(Health.FAILING, last_data=last, interval_s=60, now=now)
    assert not POLICY.is_stale(Health.STALE, last_data=last, interval_s=60, now=now)
