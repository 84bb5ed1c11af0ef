"""`branchline demo`: the whole system on a temporary copy of the example app.

The story (`scenario`): a push tested, a pull request's preview, an update, the merge
rolled out, a broken release rolled back. Everything it starts lives under one
temporary directory and is removed when it ends (`stopping`), however it ends: done,
failed, Ctrl-C, SIGTERM. With `keep`, everything first serves as `branchline serve`
runs it, dashboard included, until Ctrl-C or SIGTERM (`keep`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from branchline.demo.example import EXAMPLES
from branchline.demo.keep import look_around, serve_until_stopped
from branchline.demo.scenario import NEON_API_KEY, Demo, play
from branchline.demo.stopping import Interruptions, Removal, teardown
from branchline.errors import BranchlineError, UsageError
from branchline.fakes.neon import FakeNeon, FakeNeonError
from branchline.postgres import find_binaries

__all__ = ["run"]


DATABASES = ("local", "neon")


def run(
    console: Console, *, keep: bool = False, database: str = "local", example: str = "codex"
) -> int:
    """Play the demo with `example` (see `example.EXAMPLES`), its database on local
    clusters or (`database="neon"`) on Neon's API served by a fake Neon it starts
    first; returns its exit code (128 + the signal's number when one stopped it before
    its end)."""
    if database not in DATABASES:
        raise UsageError(f"the demo's database is one of {', '.join(DATABASES)}, "
                         f"not {database!r}")  # fmt: skip
    if example not in EXAMPLES:
        raise UsageError(f"the demo's example is one of {', '.join(EXAMPLES)}, "
                         f"not {example!r}")  # fmt: skip
    played = EXAMPLES[example]
    # What it needs, before anything is made: the example app and the tools its tests,
    # builds and services run with, Postgres, git.
    played.find()
    played.check()
    find_binaries()
    if shutil.which("git") is None:
        raise UsageError("the demo needs git, and there is none on the PATH",
                         hint="Install git (for example `apt-get install git`).")  # fmt: skip
    command = _command()
    with Interruptions() as interruptions:
        demo = Demo(console, keep=keep, command=command, database=database, example=played)
        ending = "failed"  # until it is known to end otherwise
        try:
            _prepare(demo)
            if database == "neon":
                _start_neon(demo)
            asyncio.run(_main(demo, interruptions))
            ending = "done"
        except (KeyboardInterrupt, asyncio.CancelledError):
            ending = "served" if demo.serving else "stopped"
            _stopping(demo, ending, interruptions.stopped_by)
        except BranchlineError:
            if keep:
                _wait_after_failure(demo)
            raise
        finally:
            with interruptions.held():
                removal = teardown(demo)
            _farewell(demo, removal, ending)
    if removal.problems:
        return 1
    return 128 + interruptions.stopped_by if ending == "stopped" else 0


def _command() -> str:
    """How a shell runs this very branchline: `branchline` when it is the one on the
    PATH, else its full path (a virtualenv not activated)."""
    ours = Path(sys.executable).parent / "branchline"
    if not ours.exists():
        return f"{sys.executable} -m branchline"
    found = shutil.which("branchline")
    return "branchline" if found and Path(found).resolve() == ours.resolve() else str(ours)


def _prepare(demo: Demo) -> None:
    demo.root.chmod(0o755)  # when run as root, Postgres runs as another user: it must enter
    demo.say(f"the demo works in {demo.root}; everything it starts is removed when it ends",
             whole=True)  # fmt: skip
    # What the demo starts itself runs this interpreter's tools first. State lives in
    # the demo's own directory.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # The variables the example's branchline.toml refers to (codex's `[security] path`
    # names this interpreter, which has psycopg, for code from its branches).
    os.environ.update(demo.example.variables())
    os.environ["BRANCHLINE_STATE_DIR"] = str(demo.state_dir)
    os.environ.pop("BRANCHLINE_DATABASE_URL", None)
    # A throw-away project: any free ports (it prints its URLs), unless the user chose,
    # so that it runs beside the user's own serve on 8080.
    for variable in ("BRANCHLINE_EDGE_PORT", "BRANCHLINE_DNS_PORT", "BRANCHLINE_API_PORT"):
        os.environ.setdefault(variable, "0")


def _start_neon(demo: Demo) -> None:
    """The fake Neon, in the demo's directory, before anything else: the example's
    database branches are made through its API (held to Neon's OpenAPI document), each
    a real local cluster. The teardown stops it. branchline gets the key from
    NEON_API_KEY, as it would Neon's."""
    demo.say("\n[bold]the fake Neon: Neon's API v2 on loopback, its branches real local "
             "Postgres clusters[/bold]")  # fmt: skip
    began = time.monotonic()
    key = f"demo-{secrets.token_urlsafe(24)}"
    os.environ[NEON_API_KEY] = key  # for the pipelines here, the edge, the teardown
    demo.neon_dir.mkdir(mode=0o755)
    demo.neon_dir.chmod(0o755)  # Postgres, as another user when run as root, enters it
    try:
        demo.neon = FakeNeon.start(demo.neon_dir, api_key=key)
    except FakeNeonError as exc:
        raise BranchlineError(f"the fake Neon did not start: {exc}") from exc
    took = time.monotonic() - began
    demo.say(f"  [green]✓[/green] project {demo.neon.project_id} at {escape(demo.neon.url)}, "
             f"default branch production ({took:.1f} s)", whole=True)  # fmt: skip


async def _main(demo: Demo, interruptions: Interruptions) -> None:
    interruptions.task = asyncio.current_task()  # what SIGTERM cancels, as Ctrl-C does
    played = await play(demo)
    if demo.keep:
        await serve_until_stopped(demo, played)


def _wait_after_failure(demo: Demo) -> None:
    demo.say("\n[red]the demo failed[/red]; everything stays up until Ctrl-C or SIGTERM. "
             "Look around, from another terminal:")  # fmt: skip
    for line in look_around(demo):
        demo.say(f"  {escape(line)}", whole=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM made one (Interruptions)
        pass


def _stopping(demo: Demo, ending: str, stopped_by: signal.Signals) -> None:
    if ending == "stopped":
        during = f" during “{demo.current_phase}”" if demo.current_phase else ""
        demo.say(f"\n[yellow]the demo was stopped ({stopped_by.name}){during}[/yellow]")
    demo.say(f"removing everything the demo started ({stopped_by.name}) ...")


def _farewell(demo: Demo, removal: Removal, ending: str) -> None:
    """The last word: what was removed, truthfully, and how to keep it next time."""
    removed = removal.describe(demo)
    if removal.problems:
        demo.say("\n[red]could not remove everything the demo started:[/red] "
                 + escape("; ".join(removal.problems)))  # fmt: skip
        demo.say(f"what did go: {escape(removed)}")
        return
    demo.say(f"\nremoved everything the demo started: {escape(removed)}.")
    if ending == "done":
        again = " --database neon" if demo.database == "neon" else ""
        if demo.example.name != "codex":
            again = f" --example {demo.example.name}{again}"
        demo.say("Its URLs above are gone with it. To keep it all running and look around "
                 "(live URLs, the dashboard, the CLI): "
                 f"`{demo.command} demo{again} --keep`.")  # fmt: skip
