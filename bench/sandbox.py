"""What the sandbox adds to a step: a no-op step run bare and boxed.

Target (untrusted-code issue): the sandbox adds under 20 ms to a step. Each round
runs the same no-op (`/bin/true`, and `python -c pass` as a step that starts an
interpreter) once bare and once inside the sandbox exactly as a job's step is boxed
(a worktree mounted writable, the system read-only, as the unprivileged sandbox
user), alternating which goes first; medians of the differences are reported.

    .venv/bin/python bench/sandbox.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from branchline.sandbox import Box, Sandbox

TARGET_MS = 20.0


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return (time.perf_counter() - began) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-state-"))
    work = Path(tempfile.mkdtemp(prefix="bench-job-")) / "src"
    work.mkdir()
    sandbox = Sandbox.configure(
        enabled=True, protected=(state,), path=os.environ["PATH"].split(os.pathsep)
    )
    sandbox.check()
    sandbox.hand_over(work)
    box = Box(writable=(work,))
    env = sandbox.base_env()
    rows = []
    for label, step in (
        ("/bin/true", ["/bin/true"]),
        ("python -c pass", [sys.executable, "-c", "pass"]),
    ):
        bare, boxed = [], []
        for round_ in range(args.rounds):
            pair = [("bare", step), ("boxed", sandbox.wrap(step, box, cwd=work))]
            for name, argv in pair if round_ % 2 == 0 else reversed(pair):
                (bare if name == "bare" else boxed).append(timed(argv, work, env))
        added = [b - a for a, b in zip(bare, boxed, strict=True)]
        rows.append((label, statistics.median(bare), statistics.median(boxed),
                     statistics.median(added)))  # fmt: skip
    load = os.getloadavg()[0]
    print(f"{'step':<16}{'bare ms':>10}{'boxed ms':>10}{'added ms':>10}   (load {load:.2f})")
    for label, bare_ms, boxed_ms, added_ms in rows:
        print(f"{label:<16}{bare_ms:>10.1f}{boxed_ms:>10.1f}{added_ms:>10.1f}")
    worst = max(row[3] for row in rows)
    ok = worst < TARGET_MS
    print(
        f"summary: true_bare_ms={rows[0][1]:.1f} true_boxed_ms={rows[0][2]:.1f} "
        f"true_added_ms={rows[0][3]:.1f} python_added_ms={rows[1][3]:.1f} "
        f"target_added_ms={TARGET_MS:.0f} load={load:.2f} ok={ok}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
