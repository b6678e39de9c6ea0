"""file_cleanup against real folders: plan, apply through the trash, rollback, purge."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.fakes import FakeClock
from tests.plugins.builtin.actions import ProgressLog, action_context
from unity.plugins.builtin import file_cleanup
from unity.plugins.builtin.file_cleanup import FileCleanup, FileCleanupParams
from unity.plugins.sdk import ActionContext, ActionError

DAY = 86_400


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "srv" / "logs"
    path.mkdir(parents=True)
    return path


def write(path: Path, size: int, age_days: float, clock: FakeClock) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    mtime = int((clock.now().timestamp() - age_days * DAY) * 1_000_000_000)
    os.utime(path, ns=(mtime, mtime))
    return path


def exists(path: Path | str) -> bool:
    """``Path.exists`` (kept out of the async tests, where ruff wants no blocking calls)."""
    return Path(path).exists()


def trash_root(tmp_path: Path) -> Path:
    return tmp_path / "data" / "actions" / "file_cleanup" / "trash"


def files_under(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def context(
    tmp_path: Path, http: httpx.AsyncClient, clock: FakeClock, run_id: str = "run-1", **params: Any
) -> ActionContext[Any]:
    return action_context(
        FileCleanup, params, data_dir=tmp_path / "data", http=http, clock=clock, run_id=run_id
    )


def params(root: Path, **extra: Any) -> dict[str, Any]:
    return {"root": str(root), "patterns": ["*.log"], "older_than_days": 7} | extra


async def test_the_plan_lists_every_old_matching_file_and_the_bytes_freed(
    tmp_path: Path, root: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    write(root / "app.log", 100, 10, clock)
    write(root / "nested" / "deep" / "worker.log", 250, 30, clock)
    write(root / "fresh.log", 999, 1, clock)  # too recent
    write(root / "app.txt", 999, 30, clock)  # another pattern
    write(root / "keep.log", 999, 30, clock)  # excluded
    outside = write(tmp_path / "elsewhere" / "secret.log", 999, 30, clock)
    (root / "link.log").symlink_to(outside)
    (root / "linked-dir").symlink_to(outside.parent, target_is_directory=True)

    ctx = context(tmp_path, http, clock, **params(root, exclude=["keep.*"]))
    plan = await FileCleanup().plan(ctx)

    assert [step["path"] for step in plan.steps] == ["app.log", "nested/deep/worker.log"]
    assert all(step["description"].startswith("move to the trash ") for step in plan.steps)
    assert plan.data["bytes"] == 350
    assert plan.metrics == {"files_planned": 2, "bytes_planned": 350}
    assert plan.summary.startswith("Remove 2 files (350 B) older than 7 days matching *.log")
    assert plan.data["root"] == str(root)
    # Planning changes nothing.
    assert (root / "app.log").exists()
    assert not (tmp_path / "data" / "actions" / "file_cleanup" / "trash").exists()


async def test_patterns_with_a_slash_match_the_relative_path(
    tmp_path: Path, root: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    write(root / "cache" / "a.tmp", 1, 10, clock)
    write(root / "other" / "b.tmp", 1, 10, clock)

    ctx = context(
        tmp_path, http, clock, **params(root, patterns=["cache/*.tmp"], older_than_days=0)
    )
    plan = await FileCleanup().plan(ctx)

    assert [step["path"] for step in plan.steps] == ["cache/a.tmp"]


async def test_not_recursive_only_looks_at_the_top_folder(
    tmp_path: Path, root: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    write(root / "top.log", 1, 10, clock)
    write(root / "sub" / "below.log", 1, 10, clock)

    plan = await FileCleanup().plan(context(tmp_path, http, clock, **params(root, recursive=False)))

    assert [step["path"] for step in plan.steps] == ["top.log"]


@pytest.mark.parametrize(
    ("root_value", "message"),
    [
        ("/", "too close to /"),
        ("/var", "too close to /"),
        ("/etc/nginx", "inside the system tree /etc"),
        ("/usr/local/lib", "inside the system tree /usr"),
        ("relative/logs", "absolute path"),
        ("/srv/app/../../etc/ssl", "inside the system tree /etc"),
    ],
)
def test_dangerous_roots_are_refused(root_value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FileCleanupParams(root=root_value, patterns=["*.log"], older_than_days=7)


@pytest.mark.parametrize("pattern", ["", "../*.log", "/etc/*.conf"])
def test_patterns_may_not_leave_root(pattern: str) -> None:
    with pytest.raises(ValidationError):
        FileCleanupParams(root="/srv/logs", patterns=[pattern], older_than_days=7)


async def test_a_root_that_is_a_link_to_a_system_folder_is_refused(
    tmp_path: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    link = tmp_path / "innocent"
    link.symlink_to("/usr/share", target_is_directory=True)

    with pytest.raises(ActionError, match="inside the system tree /usr"):
        await FileCleanup().plan(context(tmp_path, http, clock, **params(link)))


async def test_a_missing_root_is_a_clean_error(
    tmp_path: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    with pytest.raises(ActionError, match="is not an existing folder"):
        await FileCleanup().plan(context(tmp_path, http, clock, **params(tmp_path / "nope")))


async def test_too_many_files_refuse_to_plan(
    tmp_path: Path, root: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    for n in range(4):
        write(root / f"{n}.log", 1, 10, clock)

    with pytest.raises(ActionError, match="more than 3 files match"):
        await FileCleanup().plan(context(tmp_path, http, clock, **params(root, max_files=3)))


async def test_apply_moves_exactly_the_planned_files_to_the_trash(
    tmp_path: Path, root: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    write(root / "a.log", 100, 10, clock)
    write(root / "sub" / "b.log", 200, 10, clock)
    grows = write(root / "grows.log", 300, 10, clock)
    gone = write(root / "gone.log", 400, 10, clock)
    replaced = write(root / "replaced.log", 500, 10, clock)
    ctx = context(tmp_path, http, clock, **params(root))
    action = FileCleanup()
    plan = await action.plan(ctx)
    assert len(plan.steps) == 5
    # Between the plan and its approval, the world moves on.
    with grows.open("ab") as handle:
        handle.write(b"more")
    gone.unlink()
    # Same size and time, another inode (made before the old one goes, so it is not reused).
    os.replace(write(root / "replacement.tmp", 500, 10, clock), replaced)
    write(root / "late.log", 1, 10, clock)  # matches now, was not in the plan
    progress = ProgressLog()

    result = await action.apply(ctx, plan, progress)

    assert result.success
    assert sorted(item["path"] for item in result.data["removed"]) == ["a.log", "sub/b.log"]
    reasons = {item["path"]: item["reason"] for item in result.data["skipped"]}
    assert reasons["gone.log"] == "no longer exists"
    assert reasons["grows.log"].startswith("changed since the plan (size 300 -> 304 bytes")
    assert reasons["replaced.log"] == "was replaced by another file since the plan"
    assert result.metrics == {
        "bytes_freed": 300,
        "files_removed": 2,
        "files_skipped": 3,
        "files_failed": 0,
        "steps": 5,
    }
    assert files_under(root) == [
        "grows.log",
        "late.log",
        "replaced.log",
    ]
    trash = Path(result.data["trash_dir"])
    assert trash == tmp_path / "data" / "actions" / "file_cleanup" / "trash" / "run-1"
    assert (trash / "files" / "sub" / "b.log").read_bytes() == b"x" * 200
    assert len(progress.reports) == 5
    assert "skipped gone.log: no longer exists" in progress.messages
    assert any(m.startswith("moved to the trash a.log") for m in progress.messages)


async def test_a_link_swapped_in_after_the_plan_is_not_followed(
    tmp_path: Path, root: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    write(root / "sub" / "a.log", 10, 10, clock)
    ctx = context(tmp_path, http, clock, **params(root))
    action = FileCleanup()
    plan = await action.plan(ctx)
    # The folder is replaced by a link to a folder outside root holding a look-alike file.
    outside = tmp_path / "outside"
    (root / "sub").rename(outside)
    (root / "sub").symlink_to(outside, target_is_directory=True)

    result = await action.apply(ctx, plan, ProgressLog())

    assert result.data["skipped"] == [
        {"path": "sub/a.log", "reason": "is now reached through a symbolic link"}
    ]
    assert (outside / "a.log").exists()


async def test_rollback_restores_the_files_but_never_overwrites_one_that_reappeared(
    tmp_path: Path, root: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    write(root / "a.log", 100, 10, clock)
    write(root / "sub" / "b.log", 200, 12, clock)
    ctx = context(tmp_path, http, clock, **params(root))
    action = FileCleanup()
    assert FileCleanup.supports_rollback()
    plan = await action.plan(ctx)
    result = await action.apply(ctx, plan, ProgressLog())
    (root / "a.log").write_text("a new file with the same name")

    undone = await action.rollback(ctx, plan, result)

    assert not undone.success
    assert undone.metrics == {"files_restored": 1, "bytes_restored": 200, "files_not_restored": 1}
    [kept] = undone.data["not_restored"]
    assert kept["path"] == "a.log"
    assert "reappeared" in kept["reason"]
    assert (root / "a.log").read_text() == "a new file with the same name"
    restored = root / "sub" / "b.log"
    assert restored.read_bytes() == b"x" * 200
    expected_mtime = (clock.now().timestamp() - 12 * DAY) * 1e9
    assert restored.stat().st_mtime_ns == pytest.approx(expected_mtime, abs=1e6)
    assert files_under(trash_root(tmp_path) / "run-1" / "files") == ["a.log"]  # kept there


async def test_a_full_rollback_empties_the_run_trash(
    tmp_path: Path, root: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    write(root / "a.log", 100, 10, clock)
    ctx = context(tmp_path, http, clock, **params(root))
    action = FileCleanup()
    plan = await action.plan(ctx)
    result = await action.apply(ctx, plan, ProgressLog())

    undone = await action.rollback(ctx, plan, result)

    assert undone.success
    assert (root / "a.log").exists()
    assert not exists(result.data["trash_dir"])


async def test_without_the_trash_files_are_deleted_and_there_is_no_rollback(
    tmp_path: Path, root: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    write(root / "a.log", 100, 10, clock)
    ctx = context(tmp_path, http, clock, **params(root, use_trash=False))
    action = FileCleanup()
    plan = await action.plan(ctx)
    assert plan.steps[0]["description"].startswith("delete a.log")

    result = await action.apply(ctx, plan, ProgressLog())

    assert result.metrics["bytes_freed"] == 100
    assert result.data["trash_dir"] is None
    assert not (root / "a.log").exists()
    assert not (tmp_path / "data" / "actions" / "file_cleanup" / "trash").exists()
    with pytest.raises(ActionError, match="nothing to restore"):
        await action.rollback(ctx, plan, result)


async def test_expired_trash_is_purged_by_the_next_apply(
    tmp_path: Path, root: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    write(root / "first.log", 100, 10, clock)
    action = FileCleanup()
    first_ctx = context(tmp_path, http, clock, "run-1", **params(root, trash_retention_days=3))
    first = await action.apply(first_ctx, await action.plan(first_ctx), ProgressLog())
    first_trash = Path(first.data["trash_dir"])
    assert exists(first_trash)

    clock.advance(2 * DAY)
    write(root / "second.log", 100, 10, clock)
    second_ctx = context(tmp_path, http, clock, "run-2", **params(root))
    second = await action.apply(second_ctx, await action.plan(second_ctx), ProgressLog())
    assert second.data["trash_purged"] == 0
    assert exists(first_trash)  # 2 of its 3 days

    clock.advance(2 * DAY)
    write(root / "third.log", 100, 10, clock)
    third_ctx = context(tmp_path, http, clock, "run-3", **params(root))
    progress = ProgressLog()
    third = await action.apply(third_ctx, await action.plan(third_ctx), progress)

    assert third.data["trash_purged"] == 1
    assert not exists(first_trash)
    assert exists(second.data["trash_dir"])  # kept 7 days
    assert progress.messages[0] == "purged 1 expired trash folders"
    with pytest.raises(ActionError, match="the trash of this run is gone"):
        await action.rollback(first_ctx, await action.plan(first_ctx), first)


async def test_the_trash_inside_root_is_never_a_target(
    tmp_path: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    # Cleaning the data dir's parent: the trash of an earlier run must not be planned away.
    root = tmp_path
    write(root / "old.log", 100, 10, clock)
    ctx = context(tmp_path, http, clock, **params(root))
    action = FileCleanup()
    await action.apply(ctx, await action.plan(ctx), ProgressLog())
    write(root / "older.log", 1, 10, clock)

    plan = await action.plan(context(tmp_path, http, clock, "run-2", **params(root)))

    assert [step["path"] for step in plan.steps] == ["older.log"]


async def test_a_plan_for_another_root_is_refused(
    tmp_path: Path, root: Path, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    write(root / "a.log", 1, 10, clock)
    plan = await FileCleanup().plan(context(tmp_path, http, clock, **params(root)))
    other = tmp_path / "srv" / "other"
    other.mkdir()

    with pytest.raises(ActionError, match="the plan is for"):
        await FileCleanup().apply(
            context(tmp_path, http, clock, **params(other)), plan, ProgressLog()
        )


def test_the_manifest_and_schema() -> None:
    plugin = file_cleanup.PLUGIN
    assert plugin.kind == "action"
    assert plugin.manifest.category == "maintenance"
    assert plugin.manifest.permissions == ("filesystem",)
    assert not plugin.requires_admin
    schema = plugin.config_schema()
    assert schema["required"] == ["root", "patterns", "older_than_days"]
    assert all(field.get("description") for field in schema["properties"].values())
