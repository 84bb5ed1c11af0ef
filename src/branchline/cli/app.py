"""The `branchline` typer application: global options and sub-commands. Its
modules import what a command needs inside the command, so building it (for
`--help`, or to find the command to run) stays quick."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from branchline import __version__
from branchline.cli import ci as ci_cmd
from branchline.cli import config as config_cmd
from branchline.cli import db as db_cmd
from branchline.cli import demo as demo_cmd
from branchline.cli import deploy as deploy_cmd
from branchline.cli import dns as dns_cmd
from branchline.cli import env as env_cmd
from branchline.cli import export as export_cmd
from branchline.cli import init as init_cmd
from branchline.cli import issues as issues_cmd
from branchline.cli import lifecycle as lifecycle_cmd
from branchline.cli import pr as pr_cmd
from branchline.cli import reconcile as reconcile_cmd
from branchline.cli import runs as runs_cmd
from branchline.cli import secret as secret_cmd
from branchline.cli import serve as serve_cmd
from branchline.cli import state as state_cmd
from branchline.cli import status as status_cmd
from branchline.cli import token as token_cmd
from branchline.cli import tools as tools_cmd
from branchline.cli.context import AppContext
from branchline.cli.output import Output

if TYPE_CHECKING:
    from typer.models import TyperInfo

app = typer.Typer(
    name="branchline",
    help="An isolated copy of the world for every change: database branches, previews, "
    "gated production rollouts.",
    no_args_is_help=True,
    add_completion=True,
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
app.command("stop")(lifecycle_cmd.stop)
app.command("down")(lifecycle_cmd.down)
app.command("health")(deploy_cmd.health)
app.add_typer(deploy_cmd.deployments_app, name="deployments")
app.add_typer(deploy_cmd.releases_app, name="releases")
app.add_typer(dns_cmd.app, name="dns")
app.add_typer(env_cmd.app, name="env")
app.add_typer(secret_cmd.app, name="secret")
app.command("push")(pr_cmd.push)
app.add_typer(pr_cmd.app, name="pr")
app.add_typer(issues_cmd.app, name="issues")
app.add_typer(token_cmd.app, name="token")
app.add_typer(ci_cmd.app, name="ci")
app.add_typer(export_cmd.app, name="export")
app.add_typer(tools_cmd.app, name="workers-tools")


def app_for(args: list[str]) -> typer.Typer:
    """The application as typer needs it to run `args`: with the one command or group
    the line names, since building every command's parameters takes longer than
    reading the line. The whole application for anything else (`--help`, no
    command, a name that is not a command, completion), so that listings,
    suggestions and errors are the same."""
    name = _command_name(args)
    commands = [c for c in app.registered_commands if c.name == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if os.environ.get("_BRANCHLINE_COMPLETE"):
        return app
    if name is None and (not args or "--help" in args):
        return _listing()
    if name is None or not (commands or groups):
        return app
    trimmed = copy.copy(app)  # the callback (global options) and settings are shared
    trimmed.registered_commands = commands
    trimmed.registered_groups = groups
    return trimmed


def _listing() -> typer.Typer:
    """For the root's help: every group by its name and help, without its commands."""
    listing = copy.copy(app)
    listing.registered_groups = [_without_commands(g) for g in app.registered_groups]
    return listing


def _without_commands(group: TyperInfo) -> TyperInfo:
    shown = copy.copy(group)
    if group.typer_instance is not None:
        emptied = copy.copy(group.typer_instance)
        emptied.registered_commands = []
        emptied.registered_groups = []
        shown.typer_instance = emptied
    return shown


def _command_name(args: list[str]) -> str | None:
    """The first word that is not a global option or an option's value; None when
    --help comes first (the root's help, whatever follows)."""
    words = iter(args)
    for word in words:
        if word in ("-c", "--config"):
            next(words, None)
        elif word in ("--", "--help"):
            return None
        elif not word.startswith("-"):
            return word
    return None
