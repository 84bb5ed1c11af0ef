"""`branchline demo` run as a user runs it, in a subprocess, for the e2e tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import REPO, eventually


class DemoProcess:
    """`branchline demo` in a subprocess (a session of its own, as a terminal's job),
    its output collected as it comes."""

    def __init__(self, tmp: Path, *args: str) -> None:
        # Nothing of the user's branchline state; where the Workers tools are, kept.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("BRANCHLINE_") or k == "BRANCHLINE_WORKERS_TOOLS"}  # fmt: skip
        env.update(TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "branchline", "demo", *args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        def shown() -> bool | None:
            if self.process.poll() is not None:
                raise AssertionError(f"the demo ended before {text!r}:\n{self.out[-3000:]}")
            return True if text in self.out else None

        eventually(shown, timeout=timeout)

    def root(self) -> Path:
        found = re.search(r"the demo works in (\S+);", self.out)
        assert found, self.out[-3000:]
        return Path(found.group(1))

    def ended(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the demo did not end within {timeout:g} s:\n{self.out[-3000:]}"
            ) from None
        self.reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """Whatever happened, the demo itself does not outlive the test."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
