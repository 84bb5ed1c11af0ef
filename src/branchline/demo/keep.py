"""`branchline demo --keep`: once the story is told, everything stays up as `branchline
serve` runs it (edge, DNS, supervisor, workers, HTTP API and dashboard) until Ctrl-C
or SIGTERM, with the live URLs, a token for the dashboard, and the commands to look
around."""

from __future__ import annotations

import asyncio
import os
import shlex
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.markup import escape

from branchline.demo.scenario import Demo, Played, config_env
from branchline.edge import daemon
from branchline.errors import BranchlineError
from branchline.postgres.cluster import free_port
from branchline.store import tokens as token_rows

SERVE_READY_WITHIN = 60.0  # seconds for serve's HTTP server to answer


async def serve_until_stopped(demo: Demo, played: Played) -> None:
    """Hand everything to a background `branchline serve`, say where to look, and
    wait until cancelled (Ctrl-C, SIGTERM); the teardown comes after."""
    api_port = _api_port()
    # The story ran its pipelines in this process, beside an edge alone, to tell each
    # step; now serve takes over on the same ports, so every URL told above stays true.
    await asyncio.to_thread(daemon.stop, demo.state_dir)
    ports = ("--port", str(played.edge_port), "--dns-port", str(played.dns_port),
             "--api-port", str(api_port))  # fmt: skip
    await asyncio.to_thread(
        daemon.ensure_running, demo.state_dir, played.config.path, args=ports, timeout=60.0
    )
    async with played.store.connect() as conn:
        _, token = await token_rows.create(conn, played.config.project.name, "demo", "write")
    await asyncio.to_thread(_wait_for_dashboard, demo.state_dir, api_port)
    demo.serving = True
    _tell(demo, played, api_port, token)
    await asyncio.Event().wait()  # until the main task is cancelled


def _api_port() -> int:
    """The user's BRANCHLINE_API_PORT, else any free one (the demo runs beside the
    user's own serve)."""
    chosen = os.environ.get("BRANCHLINE_API_PORT", "0")
    return int(chosen) if chosen.isdigit() and int(chosen) else free_port()


def _wait_for_dashboard(state_dir: Path, api_port: int) -> None:
    url = f"http://127.0.0.1:{api_port}/dashboard/login"
    log = state_dir / "edge.log"
    deadline = time.monotonic() + SERVE_READY_WITHIN
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):  # loopback
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            pass
        if daemon.read_info(state_dir) is None:
            raise BranchlineError("branchline serve ended as it started", hint=f"See {log}.")
        time.sleep(0.1)
    raise BranchlineError(
        f"branchline serve's dashboard did not answer at {url} within {SERVE_READY_WITHIN:.0f} s",
        hint=f"See {log}.",
    )


def look_around(demo: Demo) -> list[str]:
    """The commands (with the directory and variables they need) that show the demo's
    state from another terminal."""
    # With Neon, config_env() adds its key (the fake's, made for the demo).
    variables = {"BRANCHLINE_STATE_DIR": str(demo.state_dir), **config_env(demo.example)}
    exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in variables.items())
    return [
        f"cd {shlex.quote(str(demo.project))}",
        f"export {exports}",
        *(f"{demo.command} {what}" for what in (
            "status", "runs list", "env list", "deployments list --env production",
            "issues list", "logs web --env production",
        )),
    ]  # fmt: skip


def _tell(demo: Demo, played: Played, api_port: int, token: str) -> None:
    say = demo.say
    web = played.hosts.get("web") or next(iter(played.hosts.values()))
    say("\n[bold]--keep: everything stays up[/bold], run by `branchline serve` (edge, DNS, "
        "services' supervisor, pipelines' workers, HTTP API, dashboard), until Ctrl-C or "
        "SIGTERM; then all of it is removed.")  # fmt: skip
    say("\nproduction, through the edge (a browser sends *.localhost to this machine):")
    for service, url in played.urls.items():
        say(f"  {service}: {url}", whole=True)
    say(f"  or: curl -H 'Host: {web}' http://127.0.0.1:{played.edge_port}/", whole=True)
    say(f"\ndashboard: http://127.0.0.1:{api_port}/dashboard/", whole=True)
    say("  log in with this token (made for the demo, it may write; it goes with the demo):")
    say(f"  {escape(token)}", whole=True)
    say(f"HTTP API: http://127.0.0.1:{api_port}/api/runs (header Authorization: Bearer "
        "<the token>)")  # fmt: skip
    say("\nlook around, from another terminal:")
    for line in look_around(demo):
        say(f"  {escape(line)}", whole=True)
    say(f"serve's log: {demo.state_dir / 'edge.log'}", whole=True)
    say("\nwaiting; Ctrl-C removes everything")
