"""Run a command as a subprocess: the plan shows the exact argv, folder, environment and timeout.

The command is an argv list executed directly, without a shell, unless ``shell`` is set (then
the single string in ``command`` is run by ``/bin/sh -c``). The executable is resolved on
``PATH`` when planning, and that very file is what ``apply`` runs. Output (stdout and stderr
merged) is streamed line by line as progress, so it becomes the run's log; the result keeps
the exit code and the last lines. The process runs in its own process group: when the
timeout passes (or the run is cancelled) the group gets SIGTERM, then SIGKILL after a grace
period, so the command's children go too. A non-zero exit code is a failed result.

Environment values whose names look like credentials (``*TOKEN*``, ``*PASSWORD*``, ...) are
masked in the plan and read from the task's parameters when applying. Only keys with the
``admin`` scope may create tasks with this action (``requires_admin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
from collections import deque
from typing import Any

from pydantic import Field, field_validator, model_validator

from unity.plugins.builtin._secrets import mask_mapping
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

__all__ = ["PLUGIN", "ShellCommand", "ShellCommandParams"]

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_LINE_CHARS = 4_096
READ_CHUNK = 65_536


class ShellCommandParams(ActionParams):
    """What to run, where, with which extra environment, for how long at most."""

    command: list[str] = Field(
        min_length=1,
        max_length=1_000,
        description="The argv: program then arguments, run without a shell, e.g. "
        '["systemctl", "restart", "nginx"]. With `shell`, a single shell command line.',
        examples=[["apt-get", "-y", "autoremove"]],
    )
    shell: bool = Field(
        default=False,
        description="Run the single string in `command` with /bin/sh -c (pipes, globbing). "
        "Off by default: an argv cannot be misread by a shell.",
    )
    cwd: str | None = Field(
        default=None, description="Absolute working directory; default: Unity's data directory."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Variables added to Unity's environment. Values of names containing "
        "TOKEN, SECRET, PASSWORD or API_KEY are masked in the plan.",
    )
    timeout_s: float = Field(
        default=300, gt=0, le=86_400, description="Seconds before the process group is killed."
    )
    kill_grace_s: float = Field(
        default=5, ge=0, le=60, description="Seconds between SIGTERM and SIGKILL at the timeout."
    )
    tail_lines: int = Field(
        default=50, ge=1, le=1_000, description="Last output lines kept in the run's result."
    )
    max_log_lines: int = Field(
        default=1_000,
        ge=0,
        le=100_000,
        description="Output lines streamed to the run log; later lines only reach the tail.",
    )

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        if any("\x00" in arg for arg in value) or not value[0]:
            raise ValueError("the program name must be non-empty and no argument may hold NUL")
        return value

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isabs(value):
            raise ValueError("cwd must be an absolute path")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, val in value.items():
            if not ENV_NAME.match(name) or "\x00" in val:
                raise ValueError(f"invalid environment variable {name!r}")
        return value

    @model_validator(mode="after")
    def _shell_takes_one_line(self) -> ShellCommandParams:
        if self.shell and len(self.command) != 1:
            raise ValueError("with shell, command must be a single command line")
        return self


def _argv(params: ShellCommandParams) -> list[str]:
    return ["/bin/sh", "-c", params.command[0]] if params.shell else list(params.command)


def _shown(params: ShellCommandParams, cwd: str) -> dict[str, Any]:
    """What the plan shows and ``apply`` checks the parameters against."""
    return {
        "argv": _argv(params),
        "cwd": cwd,
        "env": mask_mapping(params.env),
        "timeout_s": params.timeout_s,
    }


def _resolve(argv0: str, cwd: str, env: dict[str, str]) -> str:
    search_path = env.get("PATH", os.environ.get("PATH", os.defpath))
    if "/" in argv0:
        candidate = argv0 if os.path.isabs(argv0) else os.path.join(cwd, argv0)
        found = candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None
    else:
        found = shutil.which(argv0, path=search_path)
    if found is None:
        raise ActionError(f"program not found or not executable: {argv0}")
    return os.path.abspath(found)


def _check_cwd(cwd: str) -> None:
    if not os.path.isdir(cwd):
        raise ActionError(f"working directory {cwd} does not exist")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ShellCommand(Action[ShellCommandParams]):
    """Runs one command with a timeout, streaming its output into the run log."""

    manifest = Manifest(
        id="shell_command",
        name="Shell command",
        version="1.0.0",
        kind="action",
        category="automation",
        description="Run a command (an argv, or a shell line when asked) with a timeout; "
        "output streams into the run log, a non-zero exit code fails the run.",
        permissions=("exec",),
    )
    requires_admin = True

    async def plan(self, ctx: ActionContext[ShellCommandParams]) -> Plan:
        """Resolve the program and check the folder; the plan shows exactly what will run."""
        params = ctx.params
        cwd = params.cwd or str(ctx.data_dir)
        await ctx.run_blocking(_check_cwd, cwd)
        argv = _argv(params)
        executable = await ctx.run_blocking(_resolve, argv[0], cwd, params.env)
        shown = _shown(params, cwd)
        env_text = " ".join(f"{k}={shlex.quote(v)}" for k, v in shown["env"].items())
        description = f"run {shlex.join(argv)} in {cwd}"
        if env_text:
            description += f" with {env_text}"
        description += f" (timeout {params.timeout_s:g} s)"
        return Plan(
            summary=f"Run {shlex.join(argv)}",
            steps=[{"description": description, **shown, "executable": executable}],
            data=shown
            | {
                "executable": executable,
                "kill_grace_s": params.kill_grace_s,
                "tail_lines": params.tail_lines,
                "max_log_lines": params.max_log_lines,
            },
        )

    async def apply(
        self, ctx: ActionContext[ShellCommandParams], plan: Plan, progress: Progress
    ) -> Result:
        """Run the planned command; each output line is a progress report."""
        params = ctx.params
        cwd = str(plan.data["cwd"])
        expected = {key: plan.data.get(key) for key in ("argv", "cwd", "env", "timeout_s")}
        if _shown(params, params.cwd or str(ctx.data_dir)) != expected:
            raise ActionError("the task's parameters changed since this plan was made")
        argv = [str(arg) for arg in plan.data["argv"]]
        timeout_s = float(plan.data["timeout_s"])
        tail: deque[str] = deque(maxlen=int(plan.data.get("tail_lines", 50)))
        max_log = int(plan.data.get("max_log_lines", 1_000))
        lines = 0

        async def emit(raw: bytes) -> None:
            nonlocal lines
            line = raw.decode("utf-8", "replace").rstrip("\r")[:MAX_LINE_CHARS]
            lines += 1
            tail.append(line)
            if lines <= max_log:
                await progress(lines, None, line)
            elif lines == max_log + 1:
                await progress(lines, None, "(further output only kept in the result's tail)")

        started = ctx.clock.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                executable=str(plan.data["executable"]),
                cwd=cwd,
                env=os.environ | params.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ActionError(f"could not start {argv[0]}: {exc.strerror or exc}") from exc
        assert process.stdout is not None  # stdout=PIPE

        async def pump() -> int:
            assert process.stdout is not None
            pending = b""
            while chunk := await process.stdout.read(READ_CHUNK):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    await emit(raw)
                if len(pending) > MAX_LINE_CHARS * 4:  # a very long line: report it in parts
                    await emit(pending)
                    pending = b""
            if pending:
                await emit(pending)
            return await process.wait()

        timed_out = False
        try:
            async with asyncio.timeout(timeout_s):
                exit_code = await pump()
        except TimeoutError:
            timed_out = True
            exit_code = await self._stop(process, float(plan.data.get("kill_grace_s", 5)))
        except asyncio.CancelledError:
            await asyncio.shield(self._stop(process, 0))
            raise
        duration = ctx.clock.monotonic() - started
        if timed_out:
            summary = f"timed out after {timeout_s:g} s; the process group was killed"
        else:
            summary = f"exit code {exit_code}"
        return Result(
            success=exit_code == 0 and not timed_out,
            summary=summary,
            data={
                "exit_code": exit_code,
                "timed_out": timed_out,
                "tail": list(tail),
                "output_lines": lines,
                "argv": argv,
            },
            metrics={"exit_code": exit_code, "duration_s": duration, "output_lines": lines},
        )

    @staticmethod
    async def _stop(process: asyncio.subprocess.Process, grace_s: float) -> int:
        """SIGTERM the process group, SIGKILL it after ``grace_s``; return the exit code."""
        _signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await process.wait()
        _signal_group(process.pid, signal.SIGKILL)
        return await process.wait()


PLUGIN = ShellCommand
