"""The `branchline` command: global options, sub-commands, and the one place
that turns errors into messages and exit codes."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from branchline import __version__
from branchline.cli import config as config_cmd
from branchline.cli import db as db_cmd
from branchline.cli import demo as demo_cmd
from branchline.cli import deploy as deploy_cmd
from branchline.cli import dns as dns_cmd
from branchline.cli import init as init_cmd
from branchline.cli import issues as issues_cmd
from branchline.cli import pr as pr_cmd
from branchline.cli import reconcile as reconcile_cmd
from branchline.cli import runs as runs_cmd
from branchline.cli import secret as secret_cmd
from branchline.cli import serve as serve_cmd
from branchline.cli import state as state_cmd
from branchline.cli import status as status_cmd
from branchline.cli import token as token_cmd
from branchline.cli.context import AppContext
from branchline.cli.output import Output
from branchline.errors import BranchlineError
from branchline.masking import mask_url

app = typer.Typer(
    name="branchline",
    help="An isolated copy of the world for every change: database branches, previews, "
    "gated production rollouts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"branchline {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    json_output: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON output.", envvar="BRANCHLINE_JSON")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Show tracebacks for errors.", envvar="BRANCHLINE_DEBUG"),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Path to branchline.toml (default: found from the current directory up).",
            envvar="BRANCHLINE_CONFIG",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    ctx.obj = AppContext(output=Output(json=json_output, debug=debug), config_path=config)


app.command("demo")(demo_cmd.demo)
app.command("init")(init_cmd.init)
app.command("status")(status_cmd.status)
app.add_typer(config_cmd.app, name="config")
app.add_typer(state_cmd.app, name="state")
app.add_typer(db_cmd.app, name="db")
app.add_typer(runs_cmd.app, name="runs")
app.command("worker")(runs_cmd.worker)
app.command("deploy")(deploy_cmd.deploy)
app.command("restart")(deploy_cmd.restart)
app.command("rollback")(deploy_cmd.rollback)
app.command("restore")(deploy_cmd.restore)
app.command("reconcile")(reconcile_cmd.reconcile_command)
app.command("logs")(deploy_cmd.logs)
app.command("edge")(deploy_cmd.edge)
app.command("serve")(serve_cmd.serve)
app.command("stop")(deploy_cmd.stop)
app.command("health")(deploy_cmd.health)
app.add_typer(deploy_cmd.deployments_app, name="deployments")
app.add_typer(deploy_cmd.releases_app, name="releases")
app.add_typer(dns_cmd.app, name="dns")
app.add_typer(secret_cmd.app, name="secret")
app.command("push")(pr_cmd.push)
app.add_typer(pr_cmd.app, name="pr")
app.add_typer(issues_cmd.app, name="issues")
app.add_typer(token_cmd.app, name="token")


GLOBAL_FLAGS = ("--json", "--debug")


def hoist_global_flags(args: list[str]) -> list[str]:
    """Let --json and --debug stand anywhere on the line, not only before the command."""
    try:
        end = args.index("--")
    except ValueError:
        end = len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
    return flags + rest + args[end:]


def run(argv: list[str] | None = None) -> int:
    """Entry point: exit codes 0 ok, 1 operation failed, 2 bad usage or config."""
    args = hoist_global_flags(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("BRANCHLINE_DEBUG", "") not in ("", "0")
    json_output = "--json" in args or os.environ.get("BRANCHLINE_JSON", "") not in ("", "0")
    output = Output(json=json_output, debug=debug)
    code = _dispatch(args, output, debug)
    if argv is None:
        sys.exit(code)
    return code


def _dispatch(args: list[str], output: Output, debug: bool) -> int:
    try:
        # Standalone mode: typer reports usage errors itself (exit 2) and raises
        # SystemExit; everything else reaches the handlers below.
        app(args=args, prog_name="branchline")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BranchlineError as exc:
        if debug:
            traceback.print_exc()
        output.error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        output.err.print("aborted")
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        output.error(
            BranchlineError(
                f"internal error: {type(exc).__name__}: {mask_url(str(exc))}",
                hint="This is a bug in branchline; run again with --debug and report the "
                "traceback.",
            )
        )
        return 1
    return 0
