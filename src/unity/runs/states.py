"""The run state machine: which status may follow which.

::

    pending → analyzing → awaiting_approval → approved | rejected | timed_out
                 │                               │                    │
                 │ (no approval needed)          └→ running ←─────────┘ (on_timeout=approve)
                 └──────────→ approved ───────────→ running → completed | failed | cancelled

A plan with no steps completes straight from ``analyzing``. Any status before
``completed`` can become ``cancelled``; ``failed`` can follow any working status. A
completed run whose action supports it goes ``running`` again while it is rolled back.
"""

from __future__ import annotations

from types import MappingProxyType

from unity.errors import ConflictError

PENDING = "pending"
ANALYZING = "analyzing"
AWAITING_APPROVAL = "awaiting_approval"
APPROVED = "approved"
REJECTED = "rejected"
TIMED_OUT = "timed_out"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"

TRANSITIONS = MappingProxyType(
    {
        PENDING: frozenset({ANALYZING, FAILED, CANCELLED}),
        ANALYZING: frozenset({PENDING, AWAITING_APPROVAL, APPROVED, COMPLETED, FAILED, CANCELLED}),
        AWAITING_APPROVAL: frozenset({APPROVED, REJECTED, TIMED_OUT, CANCELLED}),
        TIMED_OUT: frozenset({APPROVED}),
        APPROVED: frozenset({RUNNING, FAILED, CANCELLED}),
        RUNNING: frozenset({COMPLETED, FAILED, CANCELLED}),
        COMPLETED: frozenset({RUNNING}),
        REJECTED: frozenset(),
        FAILED: frozenset(),
        CANCELLED: frozenset(),
    }
)
"""Status -> the statuses that may follow it."""

STATUSES = tuple(TRANSITIONS)
#: A run in one of these is finished: it can be deleted, not cancelled.
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED, REJECTED, TIMED_OUT})
#: Statuses in which nothing is applied yet, or the apply runs: cancelling stops them.
CANCELLABLE = frozenset({PENDING, ANALYZING, AWAITING_APPROVAL, APPROVED, RUNNING})

#: How a run's status shows on its task (the task list's status filter).
TASK_STATUS = MappingProxyType(
    {
        PENDING: "pending",
        ANALYZING: "pending",
        AWAITING_APPROVAL: "pending",
        APPROVED: "pending",
        RUNNING: "running",
        COMPLETED: "completed",
        FAILED: "failed",
        REJECTED: "cancelled",
        CANCELLED: "cancelled",
        TIMED_OUT: "timeout",
    }
)


def check_transition(sources: frozenset[str] | set[str], target: str) -> None:
    """Raise ``ConflictError`` unless every status in ``sources`` may become ``target``."""
    for source in sources:
        if target not in TRANSITIONS[source]:
            raise ConflictError(f"a run cannot go from {source} to {target}")
