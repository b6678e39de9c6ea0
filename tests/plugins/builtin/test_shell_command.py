"""shell_command with real subprocesses: output streaming, exit codes, timeouts, masking."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.plugins.builtin.actions import ProgressLog, action_context
from unity.plugins.builtin import shell_command
from unity.plugins.builtin.shell_command import ShellCommand, ShellCommandParams
from unity.plugins.sdk import ActionContext, ActionError


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def context(tmp_path: Path, http: httpx.AsyncClient, **params: Any) -> ActionContext[Any]:
    return action_context(ShellCommand, params, data_dir=tmp_path, http=http)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def wait_gone(pid: int) -> bool:
    for _ in range(200):
        if process_gone(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_the_plan_shows_the_exact_argv_folder_environment_and_timeout(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    ctx = context(
        tmp_path,
        http,
        command=["echo", "hello world"],
        cwd=str(tmp_path),
        env={"MODE": "fast", "API_TOKEN": "s3cr3t"},
        timeout_s=30,
    )

    plan = await ShellCommand().plan(ctx)

    [step] = plan.steps
    assert step["argv"] == ["echo", "hello world"]
    assert step["executable"].endswith("/echo")
    assert os.path.isabs(step["executable"])
    assert step["cwd"] == str(tmp_path)
    assert step["env"] == {"MODE": "fast", "API_TOKEN": "********"}
    assert step["timeout_s"] == 30
    assert step["description"] == (
        f"run echo 'hello world' in {tmp_path} with MODE=fast API_TOKEN='********' (timeout 30 s)"
    )
    assert "s3cr3t" not in plan.model_dump_json()


async def test_output_lines_stream_as_progress_and_the_result_keeps_the_tail(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    code = """
        import os, sys
        for n in range(1, 6):
            print(f"line {n}", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        print(os.getcwd(), os.environ["API_TOKEN"], end="")
    """
    ctx = context(tmp_path, http, command=python(code), env={"API_TOKEN": "s3cr3t"}, tail_lines=3)
    action = ShellCommand()
    plan = await action.plan(ctx)
    progress = ProgressLog()

    result = await action.apply(ctx, plan, progress)

    assert result.success
    assert result.summary == "exit code 0"
    assert progress.messages == [
        "line 1",
        "line 2",
        "line 3",
        "line 4",
        "line 5",
        "to stderr",
        f"{tmp_path} s3cr3t",
    ]
    assert [step for step, _, _ in progress.reports] == list(range(1, 8))
    assert result.data["tail"] == ["line 5", "to stderr", f"{tmp_path} s3cr3t"]
    assert result.data["exit_code"] == 0
    assert result.metrics["output_lines"] == 7
    assert result.metrics["exit_code"] == 0


async def test_a_non_zero_exit_is_a_failed_result(tmp_path: Path, http: httpx.AsyncClient) -> None:
    ctx = context(tmp_path, http, command=python("print('disk full'); raise SystemExit(3)"))
    action = ShellCommand()

    result = await action.apply(ctx, await action.plan(ctx), ProgressLog())

    assert not result.success
    assert result.summary == "exit code 3"
    assert result.data["exit_code"] == 3
    assert result.data["tail"] == ["disk full"]


async def test_a_shell_runs_only_when_asked(tmp_path: Path, http: httpx.AsyncClient) -> None:
    ctx = context(tmp_path, http, command=["echo one two | tr a-z A-Z"], shell=True)
    action = ShellCommand()
    plan = await action.plan(ctx)
    assert plan.data["argv"] == ["/bin/sh", "-c", "echo one two | tr a-z A-Z"]
    progress = ProgressLog()

    result = await action.apply(ctx, plan, progress)

    assert result.success
    assert progress.messages == ["ONE TWO"]

    # Without shell the same string is one program name, which does not exist.
    with pytest.raises(ActionError, match="program not found"):
        await action.plan(context(tmp_path, http, command=["echo one two | tr a-z A-Z"]))


async def test_the_timeout_kills_the_whole_process_group(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    pid_file = tmp_path / "child.pid"
    code = f"""
        import signal, subprocess, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL stops this one
        child = subprocess.Popen(["sleep", "600"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(600)
    """
    ctx = context(tmp_path, http, command=python(code), timeout_s=3, kill_grace_s=0.5)
    action = ShellCommand()

    result = await action.apply(ctx, await action.plan(ctx), ProgressLog())

    assert not result.success
    assert result.data["timed_out"] is True
    assert result.summary == "timed out after 3 s; the process group was killed"
    assert result.data["exit_code"] == -9  # SIGTERM was ignored
    assert result.data["tail"] == ["started"]
    assert await wait_gone(int(pid_file.read_text()))


async def test_cancelling_the_run_kills_the_command(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    pid_file = tmp_path / "child.pid"
    code = f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        print("working", flush=True)
        time.sleep(600)
    """
    ctx = context(tmp_path, http, command=python(code))
    action = ShellCommand()
    plan = await action.plan(ctx)
    started = asyncio.Event()

    class Signal(ProgressLog):
        async def __call__(
            self, step: int, total: int | None, message: str, *, percent: float | None = None
        ) -> None:
            started.set()

    task = asyncio.create_task(action.apply(ctx, plan, Signal()))
    await started.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_gone(int(pid_file.read_text()))


async def test_parameters_changed_after_the_plan_are_refused(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    action = ShellCommand()
    plan = await action.plan(context(tmp_path, http, command=["echo", "safe"]))

    with pytest.raises(ActionError, match="changed since this plan"):
        await action.apply(context(tmp_path, http, command=["rm", "-rf", "x"]), plan, ProgressLog())


async def test_a_missing_folder_is_a_clean_error(tmp_path: Path, http: httpx.AsyncClient) -> None:
    ctx = context(tmp_path, http, command=["true"], cwd=str(tmp_path / "missing"))

    with pytest.raises(ActionError, match="does not exist"):
        await ShellCommand().plan(ctx)


@pytest.mark.parametrize(
    "params",
    [
        {"command": []},
        {"command": ["echo", "a"], "shell": True},
        {"command": ["true"], "cwd": "relative"},
        {"command": ["true"], "env": {"BAD-NAME": "x"}},
        {"command": ["true"], "timeout_s": 0},
    ],
)
def test_bad_parameters_are_rejected(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ShellCommandParams.model_validate(params)


def test_only_admins_may_use_it() -> None:
    plugin = shell_command.PLUGIN
    assert plugin.requires_admin
    assert plugin.kind == "action"
    assert plugin.manifest.permissions == ("exec",)
    assert not plugin.supports_rollback()
