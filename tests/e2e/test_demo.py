"""The README's first command: the demo runs end to end; with --keep everything then
serves as `branchline serve` runs it (the dashboard, a token that logs in, production
through the edge, the commands it prints) until SIGTERM, and nothing is left after.
(Without --keep, `.ci/wheel-demo` runs it from the wheel; the ending's words are in
tests/unit/test_demo_ending.py.)"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from branchline import processes
from branchline.edge import daemon
from branchline.providers.database import pool
from tests import clonefs
from tests.conftest import leftover_processes, stop_leftovers
from tests.demo_process import DemoProcess


def test_the_demo_runs_end_to_end_keeps_serving_and_cleans_up() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="demo-tmp-"))
    tmp.chmod(0o755)
    demo = DemoProcess(tmp, "--keep")
    try:
        demo.wait_for("waiting; Ctrl-C removes everything", timeout=600)
        out, root = demo.out, demo.root()
        for phase in ("1. a push", "2. a pull request", "3. a new commit", "4. the merge",
                      "5. a broken release"):  # fmt: skip
            assert phase in out
        assert "deleted afterwards" in out and "incident issue #1" in out
        # Clones where the machine can (CI: root, xfsprogs): in a pool made for it.
        image = root / "state" / "projects" / "codex" / "pool.img"
        if pool.why_not_here() is None:
            assert "database branches: copy-on-write clones" in out
            assert clonefs.loop_devices(image), "the demo's pool is mounted while it runs"
        assert "rolled back automatically; production still serves the previous release" in out
        # The whole serve runs now: its workers and HTTP server beside the edge.
        info = daemon.read_info(root / "state")
        assert info is not None and info.can_work and info.workers
        edge = re.search(r"curl -H 'Host: web.codex.localhost' http://127.0.0.1:(\d+)/", out)
        assert edge is not None and f"web: http://web.codex.localhost:{edge[1]}/" in out
        answer = httpx.get(f"http://127.0.0.1:{edge[1]}/health",
                           headers={"Host": "web.codex.localhost"})  # fmt: skip
        assert answer.status_code == 200 and answer.json()["status"] == "ok"
        # The dashboard takes the token it printed; so does the API.
        dashboard = re.search(r"dashboard: (http://127.0.0.1:\d+)/dashboard/", out)
        token = re.search(r"^\s+(blt_\S+)$", out, re.MULTILINE)
        assert dashboard is not None and token is not None, out[-3000:]
        with httpx.Client(base_url=dashboard[1]) as browser:
            login = browser.post("/dashboard/login", data={"token": token[1]})
            assert login.status_code == 303, login.text
            assert "web.codex.localhost" in browser.get("/dashboard/").text
        api = httpx.get(f"{dashboard[1]}/api/runs",
                        headers={"Authorization": f"Bearer {token[1]}"})  # fmt: skip
        assert api.status_code == 200 and len(api.json()) >= 10
        # The commands it prints to look around work, as printed.
        lines = out[out.index("look around, from another terminal:") :].splitlines()[1:]
        cd, export = shlex.split(lines[0])[1], shlex.split(lines[1])[1:]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRANCHLINE_")}
        env.update(dict(item.split("=", 1) for item in export))
        command = [*shlex.split(lines[3].strip())]  # `branchline runs list`
        assert command[-2:] == ["runs", "list"]
        if command[0] == "branchline":  # on the PATH where it ran: this interpreter's
            command = [sys.executable, "-m", "branchline", *command[1:]]
        listed = subprocess.run(command, cwd=cd, env=env, capture_output=True, text=True,
                                timeout=60, check=False)  # fmt: skip
        assert listed.returncode == 0 and "production" in listed.stdout, listed.stderr
        # SIGTERM ends it as Ctrl-C does: exit 0, everything removed.
        demo.process.send_signal(signal.SIGTERM)
        assert demo.ended(timeout=120) == 0, demo.out[-3000:]
        assert "removed everything the demo started:" in demo.out
        assert leftover_processes(tmp) == []
        assert processes.trees(processes.tree_prefix(root / "state" / "projects" / "codex")) == []
        assert list(tmp.iterdir()) == []
        assert not clonefs.loop_devices(image), "the demo's pool outlived it"
    finally:
        demo.kill()
        stop_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
