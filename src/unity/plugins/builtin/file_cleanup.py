"""Remove old files under a directory: the plan lists each one, the run can be rolled back.

The plan walks ``root`` (never following a symbolic link, so nothing outside it is reached)
and lists every regular file whose name matches one of ``patterns`` and that was last
modified more than ``older_than_days`` ago, with its size, modification time and inode.
Applying removes exactly those files: one that changed since the plan (another size,
modification time or inode, or now reached through a symbolic link) is skipped and reported.

By default removed files are moved into this run's trash folder,
``<data dir>/actions/file_cleanup/trash/<run id>/files/<relative path>``, kept for
``trash_retention_days``; every apply first purges the trash folders past their retention.
Rolling back moves the files back, except where a file has reappeared at the same path
(that one stays in the trash and is reported). With ``use_trash: false`` files are deleted
at once and the run cannot be rolled back.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import Field, field_validator

from unity.plugins.sdk import (
    Action,
    ActionContext,
    ActionError,
    ActionParams,
    Manifest,
    Plan,
    Progress,
    Result,
)

__all__ = ["PLUGIN", "FileCleanup", "FileCleanupParams", "protected_root_reason"]

PROTECTED_TREES = tuple(
    Path(p)
    for p in (
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/proc",
        "/sbin",
        "/sys",
        "/usr",
    )
)
"""System trees no cleanup may touch, whatever the patterns."""
META_FILE = "meta.json"
SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def protected_root_reason(root: Path) -> str | None:
    """Why ``root`` (absolute, normalised) may not be cleaned, or ``None`` when it may."""
    if len(root.parts) < 3:
        return f"{root} is too close to / (use a folder at least two levels deep, e.g. /var/log)"
    for tree in PROTECTED_TREES:
        if root == tree or tree in root.parents:
            return f"{root} is inside the system tree {tree}"
    if root == Path.home():
        return f"{root} is a home directory; name a folder inside it"
    return None


def _check_pattern(pattern: str) -> str:
    if not pattern or "\x00" in pattern:
        raise ValueError("a pattern must be a non-empty glob such as '*.log'")
    if pattern.startswith("/") or ".." in PurePosixPath(pattern).parts:
        raise ValueError(f"{pattern!r}: patterns are relative to root and may not contain '..'")
    return pattern


class FileCleanupParams(ActionParams):
    """Which files to remove: under ``root``, matching ``patterns``, older than a number of days."""

    root: str = Field(
        description="Absolute path of the folder to clean, at least two levels deep "
        "(e.g. /var/log/myapp). Symbolic links are never followed out of it.",
        examples=["/var/log/myapp"],
    )
    patterns: list[str] = Field(
        min_length=1,
        max_length=100,
        description="Glob patterns (fnmatch). A pattern without '/' matches the file name "
        "('*.log'); with '/' it matches the path relative to root ('cache/*.tmp').",
        examples=[["*.log", "*.log.gz"]],
    )
    older_than_days: float = Field(
        ge=0,
        le=36_500,
        description="Only files last modified more than this many days ago.",
        examples=[7],
    )
    exclude: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Glob patterns of files to keep even when they match `patterns`.",
    )
    recursive: bool = Field(default=True, description="Also look in sub-folders of root.")
    use_trash: bool = Field(
        default=True,
        description="Move files into the run's trash folder (so the run can be rolled back) "
        "instead of deleting them at once.",
    )
    trash_retention_days: float = Field(
        default=7,
        gt=0,
        le=3_650,
        description="Days a run's trash is kept before a later cleanup purges it.",
    )
    max_files: int = Field(
        default=10_000,
        ge=1,
        le=100_000,
        description="Refuse to plan when more files than this match (the plan lists each one).",
    )

    @field_validator("root")
    @classmethod
    def _root(cls, value: str) -> str:
        if not value or "\x00" in value or not os.path.isabs(value):
            raise ValueError("root must be an absolute path")
        normalised = Path(os.path.normpath(value))
        reason = protected_root_reason(normalised)
        if reason is not None:
            raise ValueError(f"refusing to clean {reason}")
        return str(normalised)

    @field_validator("patterns", "exclude")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        return [_check_pattern(pattern) for pattern in value]


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A file as the plan saw it; ``apply`` removes it only if it still looks the same."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    device: int

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "inode": self.inode,
            "device": self.device,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileEntry:
        path = str(data["path"])
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise ActionError(f"the plan names a path outside root: {path!r}")
        return cls(
            path=path,
            size=int(data["size"]),
            mtime_ns=int(data["mtime_ns"]),
            inode=int(data["inode"]),
            device=int(data["device"]),
        )


def _matches(rel: str, name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel if "/" in p else name, p) for p in patterns)


def _scan(
    root: Path, params: FileCleanupParams, cutoff_ns: int, skip: Path
) -> tuple[list[FileEntry], list[str]]:
    """The matching files under ``root``, and the folders that could not be read."""
    entries: list[FileEntry] = []
    unreadable: list[str] = []
    skip = Path(os.path.realpath(skip))

    def on_error(exc: OSError) -> None:
        unreadable.append(f"{exc.filename}: {exc.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=False):
        current = Path(dirpath)
        if params.recursive:
            # Unity's own action data (the trash among it) is never a cleanup target.
            dirnames[:] = sorted(d for d in dirnames if current / d != skip)
        else:
            dirnames.clear()
        for name in sorted(filenames):
            path = current / name
            rel = path.relative_to(root).as_posix()
            if not _matches(rel, name, params.patterns) or _matches(rel, name, params.exclude):
                continue
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            # Symbolic links (to files or anywhere else), sockets and pipes are left alone.
            if not stat.S_ISREG(info.st_mode) or info.st_mtime_ns >= cutoff_ns:
                continue
            entries.append(FileEntry(rel, info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev))
            if len(entries) > params.max_files:
                raise ActionError(
                    f"more than {params.max_files} files match under {root}; narrow the "
                    "patterns or raise max_files"
                )
    return entries, unreadable


def _resolve_root(params: FileCleanupParams) -> Path:
    """``root`` with symbolic links resolved, checked again, and required to be a folder."""
    root = Path(os.path.realpath(params.root))
    reason = protected_root_reason(root)
    if reason is not None:
        raise ActionError(f"refusing to clean {reason} (root {params.root} resolves to it)")
    if not root.is_dir():
        raise ActionError(f"root {params.root} is not an existing folder")
    return root


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _move(source: Path, target: Path) -> None:
    """Rename, or copy and delete when ``target`` is on another filesystem."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copy2(source, target, follow_symlinks=False)
        os.unlink(source)


def _changed(path: Path, entry: FileEntry) -> str | None:
    """Why ``path`` may no longer be removed, or ``None`` when it is the file the plan saw."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "no longer exists"
    if os.path.realpath(path) != str(path):
        return "is now reached through a symbolic link"
    if not stat.S_ISREG(info.st_mode):
        return "is no longer a regular file"
    if (info.st_ino, info.st_dev) != (entry.inode, entry.device):
        return "was replaced by another file since the plan"
    if info.st_size != entry.size or info.st_mtime_ns != entry.mtime_ns:
        return (
            f"changed since the plan (size {entry.size} -> {info.st_size} bytes, "
            f"modified {_iso(entry.mtime_ns)} -> {_iso(info.st_mtime_ns)})"
        )
    return None


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="seconds")


def _purge_trash(trash: Path, now: datetime) -> int:
    """Delete the run trash folders whose retention has passed; return how many."""
    purged = 0
    if not trash.is_dir():
        return 0
    for folder in sorted(trash.iterdir()):
        try:
            meta = json.loads((folder / META_FILE).read_text())
            expires = datetime.fromisoformat(meta["expires_at"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a trash folder written by this action; leave it alone
        if expires <= now:
            shutil.rmtree(folder, ignore_errors=True)
            purged += 1
    return purged


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))


class FileCleanup(Action[FileCleanupParams]):
    """Removes old files matching patterns under a folder, through a trash that can be restored."""

    manifest = Manifest(
        id="file_cleanup",
        name="File cleanup",
        version="1.0.0",
        kind="action",
        category="maintenance",
        description="Remove files under a folder that match patterns and are older than a "
        "number of days; moved to a trash by default so the run can be rolled back.",
        permissions=("filesystem",),
    )

    async def plan(self, ctx: ActionContext[FileCleanupParams]) -> Plan:
        """List every matching file with its size; nothing is changed."""
        params = ctx.params
        root = await ctx.run_blocking(_resolve_root, params)
        cutoff = ctx.clock.now() - timedelta(days=params.older_than_days)
        cutoff_ns = int(cutoff.timestamp() * 1_000_000_000)
        skip = ctx.data_dir / "actions"
        entries, unreadable = await ctx.run_blocking(_scan, root, params, cutoff_ns, skip)
        total = sum(entry.size for entry in entries)
        verb = "move to the trash" if params.use_trash else "delete"
        what = f"older than {params.older_than_days:g} days matching {', '.join(params.patterns)}"
        if entries:
            summary = f"Remove {len(entries)} files ({_size(total)}) {what} under {root}"
            if params.use_trash:
                summary += f" (kept in the trash for {params.trash_retention_days:g} days)"
        else:
            summary = f"Nothing to remove: no file {what} under {root}"
        if unreadable:
            summary += f"; {len(unreadable)} folders could not be read"
        steps = [
            {
                "description": f"{verb} {e.path} ({_size(e.size)}, modified {_iso(e.mtime_ns)})",
                "path": e.path,
                "size": e.size,
            }
            for e in entries
        ]
        return Plan(
            summary=summary,
            steps=steps,
            data={
                "root": str(root),
                "use_trash": params.use_trash,
                "trash_retention_days": params.trash_retention_days,
                "files": [entry.as_json() for entry in entries],
                "bytes": total,
                "unreadable": unreadable,
            },
            metrics={"files_planned": len(entries), "bytes_planned": total},
        )

    async def apply(
        self, ctx: ActionContext[FileCleanupParams], plan: Plan, progress: Progress
    ) -> Result:
        """Remove the planned files that did not change; purge expired trash first."""
        root = await ctx.run_blocking(_resolve_root, ctx.params)
        if str(root) != plan.data.get("root"):
            raise ActionError(f"the plan is for {plan.data.get('root')}, not for {root}")
        entries = [FileEntry.from_json(item) for item in plan.data.get("files", [])]
        use_trash = bool(plan.data.get("use_trash", True))
        now = ctx.clock.now()
        trash_base = ctx.workdir() / "trash"
        purged = await ctx.run_blocking(_purge_trash, trash_base, now)
        if purged:
            await progress(0, len(entries), f"purged {purged} expired trash folders")

        trash_dir: Path | None = None
        expires = now + timedelta(days=float(plan.data.get("trash_retention_days", 7)))
        meta = {
            "run_id": ctx.run_id,
            "task_id": ctx.task_id,
            "root": str(root),
            "created_at": now.isoformat(),
            "expires_at": expires.isoformat(),
        }
        if use_trash and entries:
            trash_dir = trash_base / (SAFE_NAME.sub("_", ctx.run_id) or "run")
            # Written before anything moves, so a crash never leaves trash that is never purged.
            await ctx.run_blocking(_write_meta, trash_dir, meta)

        removed: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        errors: list[dict[str, str]] = []
        for number, entry in enumerate(entries, start=1):
            path = root / entry.path
            reason = await ctx.run_blocking(_changed, path, entry)
            if reason is not None:
                skipped.append({"path": entry.path, "reason": reason})
                await progress(number, len(entries), f"skipped {entry.path}: {reason}")
                continue
            try:
                if trash_dir is not None:
                    await ctx.run_blocking(_move, path, trash_dir / "files" / entry.path)
                else:
                    await ctx.run_blocking(os.unlink, path)
            except OSError as exc:
                errors.append({"path": entry.path, "error": exc.strerror or str(exc)})
                await progress(number, len(entries), f"failed {entry.path}: {exc.strerror}")
                continue
            removed.append({"path": entry.path, "size": entry.size})
            verb = "moved to the trash" if trash_dir is not None else "deleted"
            await progress(number, len(entries), f"{verb} {entry.path} ({_size(entry.size)})")

        if trash_dir is not None:
            if removed:
                await ctx.run_blocking(_write_meta, trash_dir, meta | {"removed": removed})
            else:
                await ctx.run_blocking(shutil.rmtree, trash_dir, True)
                trash_dir = None
        freed = sum(item["size"] for item in removed)
        summary = f"Removed {len(removed)} files ({_size(freed)})"
        if skipped:
            summary += f"; skipped {len(skipped)} that changed since the plan"
        if errors:
            summary += f"; {len(errors)} could not be removed"
        return Result(
            success=not errors,
            summary=summary,
            data={
                "root": str(root),
                "trash_dir": str(trash_dir) if trash_dir is not None else None,
                "trash_expires_at": expires.isoformat() if trash_dir is not None else None,
                "removed": removed,
                "skipped": skipped,
                "errors": errors,
                "trash_purged": purged,
            },
            metrics={
                "bytes_freed": freed,
                "files_removed": len(removed),
                "files_skipped": len(skipped),
                "files_failed": len(errors),
                "steps": len(entries),
            },
        )

    async def rollback(
        self, ctx: ActionContext[FileCleanupParams], plan: Plan, result: Result
    ) -> Result:
        """Move the run's files back from the trash; never overwrite a file that reappeared."""
        if not plan.data.get("use_trash", True):
            raise ActionError("the files were deleted, not moved to the trash: nothing to restore")
        removed = result.data.get("removed") or []
        if not removed:
            return Result(summary="Nothing to restore: the run removed no file")
        trash_dir = await ctx.run_blocking(
            _locate_trash,
            ctx.workdir() / "trash",
            str(result.data.get("trash_dir") or ""),
            plan.data.get("trash_retention_days", 7),
        )
        root = Path(str(plan.data["root"]))
        restored: list[dict[str, Any]] = []
        kept: list[dict[str, str]] = []
        for item in removed:
            entry_path = str(item["path"])
            pure = PurePosixPath(entry_path)
            if pure.is_absolute() or ".." in pure.parts:
                raise ActionError(f"the result names a path outside root: {entry_path!r}")
            source = trash_dir / "files" / entry_path
            target = root / entry_path
            reason = await ctx.run_blocking(_restore_problem, root, source, target)
            if reason is None:
                try:
                    await ctx.run_blocking(_move, source, target)
                except OSError as exc:
                    reason = f"could not be moved back: {exc.strerror or exc}"
            if reason is None:
                restored.append({"path": entry_path, "size": int(item.get("size", 0))})
            else:
                kept.append({"path": entry_path, "reason": reason, "trash_path": str(source)})
        if not kept:
            await ctx.run_blocking(shutil.rmtree, trash_dir, True)
        summary = f"Restored {len(restored)} files"
        if kept:
            summary += f"; {len(kept)} left in the trash ({kept[0]['path']}: {kept[0]['reason']})"
        return Result(
            success=not kept,
            summary=summary,
            data={"restored": restored, "not_restored": kept, "trash_dir": str(trash_dir)},
            metrics={
                "files_restored": len(restored),
                "bytes_restored": sum(item["size"] for item in restored),
                "files_not_restored": len(kept),
            },
        )


def _locate_trash(trash_base: Path, named: str, retention_days: object) -> Path:
    """The run's trash folder named in its result, checked to be one of ours and present."""
    base = Path(os.path.realpath(trash_base))
    trash_dir = Path(os.path.realpath(named)) if named else base
    if base not in trash_dir.parents:
        raise ActionError("the result does not name a trash folder of this action")
    if not trash_dir.is_dir():
        raise ActionError(
            f"the trash of this run is gone ({trash_dir}); it is purged after {retention_days} days"
        )
    return trash_dir


def _restore_problem(root: Path, source: Path, target: Path) -> str | None:
    """Why ``source`` cannot go back to ``target``, or ``None``."""
    if not os.path.lexists(source):
        return "is no longer in the trash"
    if os.path.lexists(target):
        return "a file has reappeared at this path; the removed one stays in the trash"
    # The folders on the way back must still be real folders inside root, not links out of it.
    parent = target.parent
    while not os.path.lexists(parent) and parent != root:
        parent = parent.parent
    if os.path.realpath(parent) != str(parent):
        return f"{parent} is now a symbolic link; not restoring through it"
    return None


PLUGIN = FileCleanup
