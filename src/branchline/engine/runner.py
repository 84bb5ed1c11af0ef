"""Running one step: a command in its own process group with masked, streamed
logs, or a call of a named action. Cancellation and timeouts stop the whole
process group: SIGTERM, then SIGKILL after a grace period."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from branchline.config.limits import human_duration
from branchline.engine.model import Call, Command
from branchline.errors import BranchlineError
from branchline.masking import LineMasker, mask
from branchline.processes import group_alive

LogSink = Callable[[str, str], Awaitable[None]]  # (stream, masked line)
FLUSH_SECONDS = 0.05  # how long a log line may wait before it is stored


@dataclass
class StepOutcome:
    status: str  # success, failure, cancelled
    exit_code: int | None = None
    error: str | None = None
    code: str | None = None  # a word to decide on: cancelled, timed_out, an action's code


@dataclass(frozen=True)
class JobOutcome:
    """How one job of the run stands (for actions that report on the others)."""

    name: str
    status: str
    error: str | None = None
    error_code: str | None = None


class StepContext(Protocol):
    """What an action receives: facts about the run, and ways to report."""

    run_id: int
    project: str
    workflow: str
    triggered_by: str
    sha: str | None
    ref: str | None
    pr: int | None
    repo: Path | None  # the run's git repository (actions check out `sha` from it)
    secrets: Mapping[str, str]

    async def log(self, line: str) -> None: ...

    async def jobs(self) -> list[JobOutcome]:
        """Every job of this run, as it stands now."""
        ...

    async def publish(
        self, name: str, value: str, *, sensitive: bool = False, days: float = 7
    ) -> None: ...

    async def artifact(
        self, name: str, *, workflow: str | None = None, sha: str | None = None
    ) -> str: ...


Action = Callable[..., Awaitable[Any]]


@dataclass
class ProcessWatch:
    """How a running command learns it must stop."""

    should_cancel: Callable[[], Awaitable[str | None]]  # why it must stop, if it must
    on_started: Callable[[int], Awaitable[None]]  # receives the process group id
    grace: float = 5.0
    poll: float = 0.2
    cancellable: bool = True
    reasons: list[str] = field(default_factory=list)
    timeout: float | None = None  # the step's deadline, when the step sets none itself
    timeout_setting: str = "[limits] step_timeout"  # the key behind `timeout`


async def run_command(
    command: Command,
    *,
    cwd: Path,
    env: Mapping[str, str],
    secrets: Mapping[str, str],
    sink: LogSink,
    watch: ProcessWatch,
    wrap: Callable[[list[str], Path], list[str]] | None = None,
) -> StepOutcome:
    """Run an argument list (never a shell string) and stream its masked output.
    `wrap` turns the argument list into the one that runs it (in a sandbox)."""
    workdir = cwd / command.cwd if command.cwd else cwd
    argv = list(command.args) if wrap is None else wrap(list(command.args), workdir)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=workdir,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, so grandchildren die with it
        )
    except OSError as exc:
        message = f"cannot start {command.args[0]!r}: {exc.strerror}"
        await sink("system", mask(message, secrets.values()))
        return StepOutcome("failure", None, message)
    readers: list[asyncio.Task[None]] = []
    try:
        await watch.on_started(process.pid)
        assert process.stdout is not None and process.stderr is not None
        readers = [
            asyncio.create_task(_pump(process.stdout, "stdout", secrets, sink)),
            asyncio.create_task(_pump(process.stderr, "stderr", secrets, sink)),
        ]
        stopped = await _supervise(process, command.timeout, watch)
        await asyncio.gather(*readers)
    except BaseException:
        # Whatever went wrong here (the store, a cancel of this task), the step's
        # processes must not outlive it.
        for reader in readers:
            reader.cancel()
        await asyncio.shield(kill_group(process.pid, watch.grace))
        raise
    code = await process.wait()
    if stopped is not None:
        why, stop_code = stopped
        await sink("system", why)
        status = "cancelled" if stop_code == "cancelled" else "failure"
        return StepOutcome(status, code, why, stop_code)
    if code != 0:
        return StepOutcome("failure", code, f"exited with code {code}")
    return StepOutcome("success", 0)


async def _supervise(
    process: asyncio.subprocess.Process, timeout: float | None, watch: ProcessWatch
) -> tuple[str, str] | None:
    """Wait for the process; stop its group on cancel or timeout. Returns why it was
    stopped and a code (cancelled, timed_out), or None when it ended by itself."""
    waiter = asyncio.create_task(process.wait())
    reason = await _until_stopped(waiter, timeout, watch)
    if reason is not None:
        await kill_group(process.pid, watch.grace, waiter)
    return reason


async def _until_stopped(
    waiter: asyncio.Future[Any], timeout: float | None, watch: ProcessWatch
) -> tuple[str, str] | None:
    """Wait for `waiter`; None when it ends by itself, else why it must stop and a
    code (timed_out past the deadline, cancelled on a cancel)."""
    limit, setting = (timeout, "") if timeout else (watch.timeout, f" ({watch.timeout_setting})")
    deadline = time.monotonic() + limit if limit else None
    while True:
        done, _ = await asyncio.wait({waiter}, timeout=watch.poll)
        if done:
            return None
        if deadline is not None and time.monotonic() > deadline:
            assert limit is not None
            return (f"timed out after {human_duration(limit)}{setting}", "timed_out")
        if watch.cancellable and (why := await watch.should_cancel()) is not None:
            return (why, "cancelled")  # "cancelled by ...": the log says who stopped it


async def kill_group(pgid: int, grace: float, waiter: asyncio.Future[Any] | None = None) -> None:
    """SIGTERM to the whole group, SIGKILL to what is left after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if waiter is not None and waiter.done() and not group_alive(pgid):
            return
        if waiter is None and not group_alive(pgid):
            return
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _pump(
    stream: asyncio.StreamReader, name: str, secrets: Mapping[str, str], sink: LogSink
) -> None:
    masker = LineMasker(secrets.values())
    # Incremental: a character split across two reads is decoded whole.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            break
        for line in masker.feed(decoder.decode(chunk)):
            await sink(name, line)
    masker.feed(decoder.decode(b"", final=True))
    for line in masker.flush():
        await sink(name, line)


async def run_call(
    call: Call,
    actions: Mapping[str, Action],
    context: StepContext,
    sink: LogSink,
    watch: ProcessWatch | None = None,
) -> StepOutcome:
    """Run a registered action; its errors become a failed step with a clear line.
    With `watch`, a cancel or the deadline cancels the action's task (an action that
    runs a process stops its whole tree when cancelled) and the step says why."""
    action = actions.get(call.action)
    if action is None:
        message = f"unknown action {call.action!r}; known: {', '.join(sorted(actions)) or 'none'}"
        await sink("system", message)
        return StepOutcome("failure", None, message)
    task = asyncio.ensure_future(action(context, **call.params))
    stopped = None
    try:
        if watch is not None:
            stopped = await _until_stopped(task, call.timeout, watch)
        if stopped is not None:
            task.cancel()
            # Its cleanup (a process tree stopped) gets its time; an action that
            # ignores the cancel is left behind rather than holding the run forever.
            await asyncio.wait({task}, timeout=max(watch.grace if watch else 0, 1.0) + 10.0)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: its failure while stopping is not news
            why, code = stopped
            await sink("system", mask(why, context.secrets.values()))
            return StepOutcome("cancelled" if code == "cancelled" else "failure", None, why, code)
        await task
    except BranchlineError as exc:
        message = mask(f"{exc.message} (hint: {exc.hint})", context.secrets.values())
        await sink("system", message)
        return StepOutcome("failure", None, mask(exc.message, context.secrets.values()), exc.code)
    except Exception as exc:  # an action's bug must fail its step, not the worker
        message = mask(f"{type(exc).__name__}: {exc}", context.secrets.values())
        await sink("system", message)
        return StepOutcome("failure", None, message)
    finally:
        if not task.done():  # this task itself was cancelled (the worker stops)
            task.cancel()
            await asyncio.wait({task}, timeout=15.0)
    return StepOutcome("success")


def now() -> datetime:
    return datetime.now(UTC)
