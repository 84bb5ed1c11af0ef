"""`branchline stop --all` on a serve that does not end when asked: it is killed
with everything it had started (a copy, a git, a step), so nothing of it runs on
orphaned after the command returns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from branchline.edge import daemon
from branchline.processes import start_time_of
from tests.conftest import eventually, leftover_processes

# A serve stand-in: deaf to SIGTERM, with a child in its process group.
STUBBORN = textwrap.dedent("""
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(child.pid, flush=True)
    time.sleep(600)
""")


def test_a_serve_deaf_to_sigterm_is_killed_with_its_children(state_dir: Path) -> None:
    env = {**os.environ, "BRANCHLINE_STATE_DIR": str(state_dir)}
    serve = subprocess.Popen([sys.executable, "-c", STUBBORN], env=env, text=True,
                             stdout=subprocess.PIPE, start_new_session=True)  # fmt: skip
    assert serve.stdout is not None
    child = int(serve.stdout.readline())
    (state_dir / daemon.STATE_FILE).write_text(json.dumps({
        "pid": serve.pid, "start_time": start_time_of(serve.pid), "edge_port": 1,
        "dns_port": 1, "workers": True,
    }))  # fmt: skip
    assert {pid for pid, _ in leftover_processes(state_dir)} == {serve.pid, child}

    assert daemon.stop(state_dir, timeout=1.0)

    serve.wait(timeout=5)
    eventually(lambda: True if not leftover_processes(state_dir) else None, timeout=5)
    assert not (state_dir / daemon.STATE_FILE).exists()
