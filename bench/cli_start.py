"""How fast the `branchline` command answers.

Targets (first-hour issue): `branchline --version` and `branchline --help` under
150 ms, a read-only command (`status`, `pr list`) under 400 ms with the state
database already running. Measured with the installed `branchline` script, as a
user runs it, in rounds that interleave every case with the floor (`python -c
pass`: the interpreter's own start); each case is also reported as a ratio over
that floor. `pr --help` (a group's help: the root options parsed, typer's value
checks loaded) is reported beside them, with no target of its own.
Each case's CPU time (user + system, its child processes included) is reported
beside the wall time: on a shared machine it shows the work a command does when
the load average makes the wall times swing.

The bench works on its own temporary project and state database (stopped and
removed at the end). Python's bytecode cache goes to a temporary directory too:
an installed CLI has its .pyc files, so PYTHONDONTWRITEBYTECODE is dropped for the
measured commands and a first untimed round writes the cache.

    .venv/bin/python bench/cli_start.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from branchline.store import Store, locate_state

TARGET_HELP_MS = 150.0
TARGET_READ_MS = 400.0
CONFIG = """\
[project]
name = "quick"
zone = "quick.localhost"

[database]
migrate = "true"
"""


def _branchline() -> list[str]:
    """The console script next to this interpreter (what users run), else `-m`."""
    script = Path(sys.executable).parent / "branchline"
    return [str(script)] if script.exists() else [sys.executable, "-m", "branchline"]


def make_project(root: Path) -> None:
    (root / "branchline.toml").write_text(CONFIG)
    for args in (("init", "-q", "-b", "main"), ("add", "."), ("commit", "-qm", "quick")):
        subprocess.run(["git", "-C", str(root), "-c", "user.name=b", "-c", "user.email=b@b",
                        *args], check=True)  # fmt: skip


def _cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed(argv: list[str], root: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run."""
    cpu, began = _cpu(), time.perf_counter()
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, check=False)
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[-2000:]}")
    return took, _cpu() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cli-start-"))
    work.chmod(0o755)
    root, state = work / "project", work / "state"
    root.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BRANCHLINE_") and k != "PYTHONDONTWRITEBYTECODE"}  # fmt: skip
    env.update(BRANCHLINE_STATE_DIR=str(state), PYTHONPYCACHEPREFIX=str(work / "pycache"))
    store = Store(locate_state(root, {"BRANCHLINE_STATE_DIR": str(state)}))
    cli = _branchline()
    cases: dict[str, tuple[list[str], float | None]] = {
        "floor": ([sys.executable, "-c", "pass"], None),
        "version": ([*cli, "--version"], TARGET_HELP_MS),
        "help": ([*cli, "--help"], TARGET_HELP_MS),
        "pr_help": ([*cli, "pr", "--help"], None),
        "status": ([*cli, "status"], TARGET_READ_MS),
        "pr_list": ([*cli, "pr", "list"], TARGET_READ_MS),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    load_before = os.getloadavg()
    try:
        make_project(root)
        asyncio.run(store.start())
        for argv, _ in cases.values():  # untimed: writes the bytecode cache
            timed(argv, root, env)
        for _ in range(args.rounds):
            for name, (argv, _) in cases.items():
                took, cpu = timed(argv, root, env)
                times[name].append(took)
                cpus[name].append(cpu)
    finally:
        store.stop()
        store.location.cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    cpu = {name: statistics.median(t) * 1e3 for name, t in cpus.items()}
    floor = med["floor"]
    print(f"{'case':<10}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'x floor':>9}{'target':>8}"
          f"{'cpu ms':>9}{'x floor':>9}")  # fmt: skip
    ok = True
    for name, (_, target) in cases.items():
        met = target is None or med[name] < target
        ok = ok and met
        print(
            f"{name:<10}{med[name]:>11.1f}{min(times[name]) * 1e3:>9.1f}"
            f"{max(times[name]) * 1e3:>9.1f}{med[name] / floor:>9.2f}"
            f"{'' if target is None else f'{target:.0f}' + ('' if met else '!'):>8}"
            f"{cpu[name]:>9.1f}{cpu[name] / cpu['floor']:>9.2f}"
        )
    print(f"{args.rounds} rounds; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after (1 min), {os.cpu_count()} cores")  # fmt: skip
    figures = " ".join(
        f"{name}_ms={med[name]:.1f}"
        + ("" if name == "floor" else f" {name}_x={ratio:.2f}")
        + f" {name}_cpu_ms={cpu[name]:.1f}"
        for name, ratio in ((name, med[name] / floor) for name in cases)
    )
    print(
        f"summary: {figures} load1={load_after[0]:.2f} target_help_ms={TARGET_HELP_MS:.0f} "
        f"target_read_ms={TARGET_READ_MS:.0f} ok={'yes' if ok else 'no'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
