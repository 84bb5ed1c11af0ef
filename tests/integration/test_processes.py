"""Stopping a service process: a process that ignores SIGTERM is killed, and `stop`
returns only once it is gone (a caller that stops and then looks finds nothing)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from branchline import processes

pytestmark = pytest.mark.integration
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def test_stop_kills_what_ignores_sigterm_and_returns_once_it_is_gone(tmp_path: Path) -> None:
    pid = processes.start([sys.executable, "-c", STUBBORN], cwd=tmp_path,
                          env=dict(os.environ), log=tmp_path / "log")  # fmt: skip
    try:
        time.sleep(0.3)  # let it install its handler
        processes.stop(pid, grace=0.3)
        assert not pid.alive()
    finally:
        if pid.alive():
            os.killpg(pid.pid, 9)
