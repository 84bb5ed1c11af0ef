"""What every fake cloud shares as a process: started as `python -m <module>` in a
session of its own (its log and ready file in its state directory, secrets by
environment, BRANCHLINE_STATE_DIR set so a leak check sees it), waited for until its
ready file appears, and stopped with SIGTERM (SIGKILL to its group if it hangs)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self


def launch(
    module: str, what: str, state_dir: Path, args: Sequence[str], *,
    env: Mapping[str, str | None], timeout: float, error: type[RuntimeError],
) -> tuple[subprocess.Popen[bytes], dict[str, Any], Path]:  # fmt: skip
    """Start `module` with `args` (plus --state-dir and --ready-file) and wait for its
    ready file: the process, what it wrote there, and its log. `env` adds variables
    (None removes one); `error` is raised, with the log's end, if it never gets ready."""
    state_dir.mkdir(parents=True, exist_ok=True)
    stem = module.rsplit(".", 1)[-1]
    ready_file = state_dir / f"fake-{stem}.ready.json"
    ready_file.unlink(missing_ok=True)
    log_file = state_dir / f"fake-{stem}.log"
    command = [sys.executable, "-m", module, "--state-dir", str(state_dir),
               "--ready-file", str(ready_file), *args]  # fmt: skip
    environment = {**os.environ, "BRANCHLINE_STATE_DIR": str(state_dir)}
    for name, value in env.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=environment, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not ready_file.exists():
        if process.poll() is not None:
            raise error(f"{what} exited with {process.returncode}:\n{tail(log_file)}")
        if time.monotonic() > deadline:
            kill_group(process)
            raise error(f"{what} did not start within {timeout:g} s:\n{tail(log_file)}")
        time.sleep(0.05)
    ready: dict[str, Any] = json.loads(ready_file.read_text())
    return process, ready, log_file


class RunningFake:
    """A fake's process, stopped by `stop()` or at the end of a `with` block."""

    stop_timeout = 10.0

    def __init__(self, process: subprocess.Popen[bytes], state_dir: Path, log_file: Path):
        self.process = process
        self.state_dir = state_dir
        self.log_file = log_file

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM and wait; SIGKILL the group if it hangs."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                kill_group(self.process)
        return self.process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return "(no log)"


async def serve_until_stopped(
    app: Any, *, name: str, port: int, ready_file: Path, facts: Mapping[str, Any],
    url_path: str = "",
) -> None:  # fmt: skip
    """The fake's side of `launch`: serve `app` on 127.0.0.1:`port` (0: any), write
    the ready file (`url`, `pid` and `facts`) once it listens, and serve until SIGTERM
    or SIGINT, then exit cleanly. Its signals are its own, not uvicorn's."""
    import asyncio
    import logging

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, lifespan="off")  # fmt: skip
    server = Server(config)
    serving = asyncio.ensure_future(server.serve())
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    if serving.done():
        await serving  # it could not listen: its error ends the process
        raise SystemExit(f"the fake {name} could not start serving")
    bound = server.servers[0].sockets[0].getsockname()[1]
    ready = {"url": f"http://127.0.0.1:{bound}{url_path}", **facts, "pid": os.getpid()}
    partial = ready_file.with_name(ready_file.name + ".partial")
    partial.write_text(json.dumps(ready))
    partial.replace(ready_file)
    logging.getLogger(f"branchline.fakes.{name.lower()}").warning(
        "fake %s: serving on %s", name, ready["url"]
    )
    await asyncio.wait({serving, asyncio.ensure_future(stop.wait())},
                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    server.should_exit = True
    await serving


async def lifespan_answered(scope: Any, receive: Any, send: Any) -> bool:
    """True when `scope` was ASGI's lifespan, now answered (a fake has nothing to
    start or stop with it: its runner opens and closes its world)."""
    if scope["type"] != "lifespan":
        return False
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return True
