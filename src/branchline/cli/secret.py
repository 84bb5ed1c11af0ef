"""`branchline secret`: per-environment secrets, encrypted at rest, never shown.

A value is read from stdin (when it is not a terminal) or from a hidden prompt,
never from the command line, where it would stay in the shell's history.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from branchline.cli.context import AppContext, Session, app_context
from branchline.environment import Environment
from branchline.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from branchline.secrets import Rotation, SecretInfo, Secrets

app = typer.Typer(help="Per-environment secrets, encrypted at rest; values are never shown.")

T = TypeVar("T")

EnvOption = Annotated[
    str,
    typer.Option(
        "--env", help="production, preview (every preview), test, or one preview: preview-<pr>."
    ),
]
NameArgument = Annotated[
    str, typer.Argument(help="The environment variable's name, e.g. AUTH_SECRET.")
]
_PIPE_HINT = (
    "pipe the value in: `printf '%s' \"$VALUE\" | branchline secret set {name} --env {env}`, "
    "or run the command in a terminal to be prompted for it"
)


def _with_secrets(
    ctx: typer.Context,
    work: Callable[[Secrets, Session], Awaitable[T]],
    *,
    need_key: bool = True,
    edge: bool = False,
) -> T:
    from branchline.secrets import load_key

    app_ctx = app_context(ctx)
    if need_key:
        # The key first: a bad key is reported before the state database is started.
        load_key(app_ctx.store().location.state_dir)
    return app_ctx.run(lambda session: work(session.kit.secrets, session), edge=edge)


def _read_value(name: str, env: str, app_ctx: AppContext) -> str:
    """The value from stdin when it is not a terminal (one trailing newline dropped),
    else from a hidden prompt asked twice."""
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        answer: str = typer.prompt(
            f"value of {name} for {env}", hide_input=True, confirmation_prompt=True, err=True
        )
        return answer
    raw = stdin.buffer.read() if stdin is not None else b""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(
            "the value on stdin is not UTF-8 text",
            hint="base64-encode binary values before storing them",
        ) from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise UsageError("no value on stdin", hint=_PIPE_HINT.format(name=name, env=env))
    return text


def _refuse_extra(extra: list[str], name: str, env: str) -> None:
    """Anything more on the line may be the value: refuse it without repeating it."""
    if not extra:
        return
    if any(arg.startswith("-") for arg in extra):
        raise UsageError(
            "unexpected options on the command line (not repeated here: they may hold a "
            "secret); `secret set` takes only NAME and --env",
            hint=_PIPE_HINT.format(name=name, env=env),
        )
    raise UsageError(
        "secret values are never taken from the command line (they would stay in the "
        "shell's history); the extra argument was ignored and not stored",
        hint=_PIPE_HINT.format(name=name, env=env)
        + ". If that was the real value, consider it exposed and choose a new one",
    )


def _restart_hint(environments: list[Environment]) -> str:
    commands = [f"branchline restart --all --env {e.name}" for e in environments]
    return (
        "services already running keep the old value until they restart; run:\n  "
        + "\n  ".join(commands)
        + "\n(or pass --restart)"
    )


@app.command(
    "set",
    # Extra words land in ctx.args instead of click's usage error, which would
    # repeat them: they may be the value, typed where it does not belong.
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def set_(ctx: typer.Context, name: NameArgument, env: EnvOption) -> None:
    """Set NAME in an environment. The value comes from stdin, or a hidden prompt."""
    from branchline.operations import deploy as deploy_ops
    from branchline.secrets import scope_of, validate_environment, validate_name, validate_value

    app_ctx = app_context(ctx)
    validate_environment(env)
    validate_name(name)
    _refuse_extra(ctx.args, name, env)
    app_ctx.config()  # a broken config is reported before the value is asked for
    value = validate_value(_read_value(name, env, app_ctx))

    async def work(
        secrets: Secrets, session: Session
    ) -> tuple[SecretInfo, bool, list[Environment]]:
        info = await secrets.set(env, name, value)
        running = await deploy_ops.running_environments(session.kit, [env])
        return info, secrets.declares(env, name), running

    info, declared, running = _with_secrets(ctx, work)
    out = app_ctx.output
    if not declared:
        out.notice(
            f"warning: {name} is not declared in [secrets.{scope_of(env)}] of branchline.toml; "
            f"it was stored anyway (add it to `names` there so a missing value is reported)"
        )
    data = {**info.as_dict(), "declared": declared}
    out.emit(data, lambda c: c.print(f"set {name} for {env} (encrypted; the value is not shown)"))
    # Only services that run now hold the old value; none running: nothing to say.
    if running:
        out.notice(_restart_hint(running).removesuffix("\n(or pass --restart)"))


@app.command("list")
def list_(
    ctx: typer.Context,
    env: Annotated[
        str | None,
        typer.Option("--env", help="Only this environment (production, preview, test, ...)."),
    ] = None,
) -> None:
    """Secret names per environment with their last change; declared names not yet set
    are listed too. Values are never shown."""
    from rich.table import Table

    from branchline.secrets import SCOPES, validate_environment

    if env is not None:
        validate_environment(env)

    async def work(secrets: Secrets, _session: Session) -> list[dict[str, Any]]:
        stored = await secrets.list(env)
        entries: list[dict[str, Any]] = [
            {
                **info.as_dict(),
                "set": True,
                "declared": secrets.declares(info.environment, info.name),
            }
            for info in stored
        ]
        for environment in [env] if env is not None else list(SCOPES):
            for name in await secrets.missing(environment):
                entries.append(
                    {
                        "environment": environment,
                        "name": name,
                        "updated_at": None,
                        "generated": False,
                        "key_id": None,
                        "set": False,
                        "declared": True,
                    }
                )
        return entries

    entries = _with_secrets(ctx, work, need_key=False)

    def human(console: Console) -> None:
        if not entries:
            console.print("no secrets" + (f" in {env}" if env else ""))
            return
        table = Table("environment", "name", "updated", "generated", "key", "declared")
        for entry in entries:
            updated = entry["updated_at"]
            table.add_row(
                entry["environment"],
                entry["name"],
                updated.strftime("%Y-%m-%d %H:%M:%S %Z") if updated else "not set",
                "yes" if entry["generated"] else "-",
                entry["key_id"] or "-",
                "yes" if entry["declared"] else "no",
            )
        console.print(table)

    app_context(ctx).output.emit(entries, human)


@app.command("delete")
def delete(ctx: typer.Context, name: NameArgument, env: EnvOption) -> None:
    """Forget NAME in an environment. Succeeds when it is not set."""
    from branchline.secrets import validate_environment, validate_name

    validate_environment(env)
    validate_name(name)

    async def work(secrets: Secrets, _session: Session) -> bool:
        return await secrets.delete(env, name)

    deleted = _with_secrets(ctx, work, need_key=False)
    app_context(ctx).output.emit(
        {"environment": env, "name": name, "deleted": deleted},
        lambda c: c.print(
            f"deleted {name} from {env}" if deleted else f"{name} was not set in {env}"
        ),
    )


@app.command("rotate")
def rotate(
    ctx: typer.Context,
    name: NameArgument,
    env: EnvOption,
    restart: Annotated[
        bool,
        typer.Option("--restart", help="Restart the services that use it, with the new value."),
    ] = False,
) -> None:
    """Replace a generated secret with a new generated value (never for production).
    `--env preview` rotates it in every preview that has one."""
    from branchline.operations import deploy as deploy_ops
    from branchline.secrets import validate_environment, validate_name

    validate_environment(env)
    validate_name(name)
    app = app_context(ctx)

    async def work(
        secrets: Secrets, session: Session
    ) -> tuple[Rotation, list[str], list[Environment]]:
        rotation = await secrets.rotate(env, name)
        running = await deploy_ops.running_environments(session.kit, list(rotation.environments))
        restarted = []
        if restart:
            for environment in running:
                done = await deploy_ops.restart_all(
                    session.kit, environment, progress=app.output.progress
                )
                restarted += [f"{d.service}:{environment.name}" for d in done]
        return rotation, restarted, running

    rotation, restarted, running = _with_secrets(ctx, work, edge=restart)
    out = app.output
    data = {**rotation.as_dict(), "restarted": restarted}

    def human(console: Console) -> None:
        if not rotation.environments:
            console.print(
                f"no preview holds a value of {name} yet; each preview gets its own when it "
                "is created"
            )
            return
        where = ", ".join(rotation.environments)
        console.print(f"rotated {name} in {where} (a new generated value; it is not shown)")
        if restarted:
            console.print(f"restarted with it: {', '.join(restarted)}")

    out.emit(data, human)
    if running and not restart:
        out.notice(_restart_hint(running))
