"""The README's walk-through, as a new user follows it: every `sh` block between
`<!-- walkthrough -->` and `<!-- /walkthrough -->`, in order, in one shell (a
block's `cd` and variables carry on to the next), from the checkout's root, with the
virtualenv's `branchline` on PATH and a fresh state directory. A command that fails
fails the test with its block and the block's output."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ANY_FREE_PORT, REPO, run_cli

README = REPO / "README.md"
SECTION = re.compile(r"<!-- walkthrough -->\n(.*?)<!-- /walkthrough -->", re.S)
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M)
MARK = re.compile(r"^::walkthrough block (\d+) at (\d+) s::$", re.M)
DEADLINE = 480.0  # seconds for the whole walk-through: about 100 s on 2 idle cores, 185 s
# on 2 cores running other suites too


def walkthrough_blocks(text: str) -> list[str]:
    """The fenced `sh` blocks of the marked section, in order."""
    sections = SECTION.findall(text)
    assert len(sections) == 1, "README.md must mark exactly one walk-through section"
    return [block.strip() for block in BLOCK.findall(sections[0])]


def script_of(blocks: list[str]) -> str:
    """One script: each block announced on the output, then run; the first command
    that fails stops it (as it would stop a reader), its status kept."""
    parts = ["set -eo pipefail"]
    for number, block in enumerate(blocks, 1):
        parts += [f'echo "::walkthrough block {number} at $SECONDS s::"', block]
    return "\n".join(parts) + "\n"


def output_by_block(output: str) -> dict[int, tuple[int, str]]:
    """Each block's output, by number, with the second it began at."""
    marks = list(MARK.finditer(output))
    ends = [m.start() for m in marks[1:]] + [len(output)]
    return {
        int(m.group(1)): (int(m.group(2)), output[m.end() + 1 : end])
        for m, end in zip(marks, ends, strict=True)
    }


def test_blocks_are_found() -> None:
    blocks = walkthrough_blocks(README.read_text())
    assert len(blocks) >= 5 and all(blocks)
    joined = "\n".join(blocks)
    for step in ("git init", "branchline db init", "--env production", "branchline push",
                 "branchline pr open", "--merge", "branchline down"):  # fmt: skip
        assert step in joined, f"the walk-through lost its `{step}`"


@pytest.mark.timeout(DEADLINE + 120)
def test_readme_walkthrough(cluster_root: Path, state_dir: Path) -> None:
    blocks = walkthrough_blocks(README.read_text())
    # Where the walk-through's `mktemp -d` lands (and so Postgres' sockets): a
    # directory the clusters' own user may enter, unlike pytest's tmp_path.
    temporary = Path(tempfile.mkdtemp(prefix="walk-", dir=cluster_root))
    temporary.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANCHLINE_", "CODEX_"))}
    env.update(ANY_FREE_PORT)  # tests run side by side: no fixed port
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        TMPDIR=str(temporary),
        BRANCHLINE_STATE_DIR=str(state_dir),
        # A reader's git knows who they are; the test's may not.
        GIT_AUTHOR_NAME="walk", GIT_AUTHOR_EMAIL="walk@example.invalid",
        GIT_COMMITTER_NAME="walk", GIT_COMMITTER_EMAIL="walk@example.invalid",
    )  # fmt: skip
    began = time.monotonic()
    shell = subprocess.Popen(
        ["bash", "-c", script_of(blocks)], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        try:
            output, _ = shell.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            output, _ = shell.communicate()
        took = time.monotonic() - began
        found = output_by_block(output)
        outputs = {number: text for number, (_, text) in found.items()}
        if shell.returncode != 0:
            number = max(outputs, default=1)
            pytest.fail(
                f"walk-through block {number} failed (exit {shell.returncode}, after "
                f"{took:.0f} s):\n{blocks[number - 1]}\n--- its output ---\n"
                f"{outputs.get(number, output)}"
            )
        assert len(outputs) == len(blocks), output
        began_at = ", ".join(f"{n}: {at} s" for n, (at, _) in sorted(found.items()))
        print(f"walk-through: {took:.1f} s (blocks began at {began_at})")
        # What each step promises, as the reader sees it.
        everything = "\n".join(outputs.values())
        assert "run 2 production: success" in everything, everything
        assert "http://web-preview-1.codex.localhost:" in everything, everything
        assert "http://web.codex.localhost:" in everything, everything
        assert "merged pull request #1" in everything, everything
        assert re.search(r"run \d+ production: success", outputs[len(blocks) - 1]), everything
        assert "services already running" not in everything  # nothing ran at `secret set`
        assert "Traceback" not in everything
        assert "Traceback" not in (state_dir / "edge.log").read_text()
        assert not list(temporary.glob("*/codex")), "the walk-through removes its copy"
    finally:
        # A walk-through that stopped half way leaves its project running: stop it
        # (the state_dir fixture then checks nothing outlived it).
        for project in temporary.glob("*/codex"):
            run_cli("down", cwd=project, env={"BRANCHLINE_STATE_DIR": str(state_dir)})
        shutil.rmtree(temporary, ignore_errors=True)
