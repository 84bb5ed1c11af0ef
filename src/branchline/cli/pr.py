"""`branchline push` and `branchline pr`: the local code host."""

from __future__ import annotations

import getpass
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from branchline import events, naming
from branchline.cli.context import Session, app_context
from branchline.cli.follow import (
    WAIT_HELP,
    exit_on_failure,
    latest_run,
    preview_dict,
    run_pipelines,
    show_outcome,
)
from branchline.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from branchline.providers.forge import LocalPullRequests, Recorded
    from branchline.store import forge as rows

app = typer.Typer(help="Local pull requests.", no_args_is_help=True)
T = TypeVar("T")


def _local(session: Session) -> LocalPullRequests:
    from branchline.providers.forge import LocalPullRequests

    forge = session.kit.forge
    if not isinstance(forge, LocalPullRequests):
        raise UsageError(
            "this project's code host keeps its own pull requests",
            hint="Open, update and close them there; its webhooks start the pipelines.",
        )
    return forge


def _record_and_run(
    ctx: typer.Context, work: Callable[[LocalPullRequests], Awaitable[T]], wait: bool,
    hook: bool = False,
) -> tuple[T, dict[str, Any] | None]:  # fmt: skip
    """Record the event(s), then (unless told not to wait) run the pipelines they start."""
    from branchline.edge import daemon

    app = app_context(ctx)

    async def main(session: Session) -> tuple[T, dict[str, Any] | None]:
        since = await latest_run(session.store, session.config.project.name) if wait else 0
        done = await work(_local(session))
        if not wait:
            info = daemon.read_info(session.store.location.state_dir)
            if not hook and (info is None or not info.workers):
                app.output.notice(
                    "recorded; no `branchline serve` runs to act on it: start one with "
                    "`branchline serve --detach` (or run `branchline worker`)"
                )
            return done, None
        return done, await run_pipelines(app, session.config, session.store, after=since)

    return app.run(main)


def _emit(
    ctx: typer.Context, data: Any, said: str, outcome: dict[str, Any] | None, pr: int | None
) -> None:
    app = app_context(ctx)

    def human(console: Console) -> None:
        console.print(said, markup=False)
        if outcome is not None:
            show_outcome(console, outcome, pr)

    app.output.emit(data if outcome is None else {"recorded": data, **outcome}, human)
    if outcome is not None:
        exit_on_failure(app, outcome)


NoWait = Annotated[bool, typer.Option("--no-wait", help=WAIT_HELP)]


def _pr_dict(pr: rows.PullRequestRow) -> dict[str, Any]:
    return {
        "number": pr.number, "title": pr.title, "head": pr.head_branch, "base": pr.base_branch,
        "sha": pr.head_sha, "state": pr.state, "created_at": pr.created_at,
        "updated_at": pr.updated_at, "closed_at": pr.closed_at, "fork": pr.fork,
    }  # fmt: skip


def _cell(text: str) -> str:
    """Text from the store shown in a terminal: control characters escaped (rows from
    before names were checked may hold some), rich's markup taken literally."""
    from rich.markup import escape

    return escape(naming.printable(text))


def _event_dict(recorded: Recorded) -> dict[str, Any]:
    event = recorded.event
    return {
        "pr": recorded.pr.as_dict() if recorded.pr else None,
        "event": None
        if event is None
        else {"id": recorded.event_id, "kind": event.kind, "action": event.action},
    }


def push(
    ctx: typer.Context,
    branch: Annotated[str | None, typer.Argument(help="Branch (default: the current one).")] = None,
    hook: Annotated[bool, typer.Option("--hook", hidden=True)] = False,
    no_deploy: Annotated[
        bool,
        typer.Option("--no-deploy", help="Test only: no rollout, even on the production branch."),
    ] = False,
    no_wait: NoWait = False,
) -> None:
    """Record a push of BRANCH's head commit and run testing on it; on the production
    branch, a rollout to production follows when the tests pass (unless --no-deploy)."""
    done, outcome = _record_and_run(
        ctx, lambda forge: forge.push(branch, source="hook" if hook else "cli",
                                      deploy=not no_deploy),
        wait=not (no_wait or hook), hook=hook,
    )  # fmt: skip
    pushed = done.event
    config = app_context(ctx).config()
    production = config.project.production_branch
    rolls_out = (
        isinstance(pushed, events.Push) and pushed.branch == production and pushed.deploy
        and not pushed.deleted
    )  # fmt: skip
    if pushed is None:
        said = "this push was recorded before (nothing to do)"
    elif not isinstance(pushed, events.Push) or pushed.deleted:
        said = "push recorded"
    elif rolls_out:
        said = (
            f"push of {pushed.branch} at {pushed.after[:12]} recorded: testing, then a rollout "
            f"to production ({', '.join(config.services) or 'no services'}) when the tests "
            "pass; `--no-deploy` tests only"
        )
    elif pushed.branch == production:
        said = (
            f"push of {pushed.branch} at {pushed.after[:12]} recorded: testing only "
            "(--no-deploy), production is not changed"
        )
    else:
        said = (
            f"push of {pushed.branch} at {pushed.after[:12]} recorded: testing only (only "
            f"{production} rolls out to production)"
        )
    data = {**_event_dict(done), "deploys_to": "production" if rolls_out else None}
    _emit(ctx, data, said, outcome, None)


@app.command("open")
def open_pr(
    ctx: typer.Context,
    branch: str,
    title: Annotated[str | None, typer.Option(help="Title (default: the branch name).")] = None,
    from_fork: Annotated[
        bool,
        typer.Option(
            "--from-fork",
            help="As if BRANCH were in another repository: tested without secrets, "
            "previewed once approved (`pr approve`).",
        ),
    ] = False,
    no_wait: NoWait = False,
) -> None:
    """Open a pull request from BRANCH into the production branch: testing, then its
    preview environment."""
    done, outcome = _record_and_run(
        ctx, lambda forge: forge.open_pr(branch, title, fork=from_fork), not no_wait
    )
    assert done.pr is not None
    number = done.pr.number
    _emit(ctx, _event_dict(done), f"opened pull request #{number} ({branch})", outcome, number)


@app.command("sync")
def sync(
    ctx: typer.Context,
    number: int,
    again: Annotated[
        bool,
        typer.Option(
            "--again",
            help="Test and preview the head commit again even with no new commit "
            "(after a fix outside the branch, or a flaky failure).",
        ),
    ] = False,
    no_wait: NoWait = False,
) -> None:
    """Take a pull request's new commits (after you commit to its branch): testing
    again, then its preview updated."""
    done, outcome = _record_and_run(
        ctx, lambda forge: forge.sync_pr(number, again=again), not no_wait
    )
    said = (
        f"pull request #{number} {'again ' if again else 'now '}at {done.pr.head_sha[:12]}"
        if done.event and done.pr
        else f"pull request #{number} has no new commits (`--again` runs it anyway)"
    )
    _emit(ctx, _event_dict(done), said, outcome, number)


@app.command("close")
def close(
    ctx: typer.Context,
    number: int,
    merge: Annotated[bool, typer.Option(help="Merge it into the production branch.")] = False,
    no_wait: NoWait = False,
) -> None:
    """Close a pull request, or merge it (a real merge commit, then a push to main);
    its preview is removed."""
    done, outcome = _record_and_run(
        ctx, lambda forge: forge.close_pr(number, merge=merge), not no_wait
    )
    said = f"{'merged' if merge else 'closed'} pull request #{number}"
    _emit(ctx, [_event_dict(d) for d in done], said, outcome, number)


@app.command("approve")
def approve(
    ctx: typer.Context,
    number: int,
    by: Annotated[str, typer.Option(help="Who approves (recorded).")] = "",
    no_wait: NoWait = False,
) -> None:
    """Approve a fork's pull request at its head commit: its code may get the
    preview's secrets and a preview. A new commit needs a new approval."""
    who = by or getpass.getuser()
    done, outcome = _record_and_run(ctx, lambda forge: forge.approve_pr(number, who), not no_wait)
    sha = done.pr.head_sha[:12] if done.pr else "?"
    said = (
        f"approved pull request #{number} at {sha}"
        if done.event
        else f"pull request #{number} was approved at {sha} before"
    )
    _emit(ctx, _event_dict(done), said, outcome, number)


@app.command("list")
def list_prs(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="open, closed or merged.")] = None,
) -> None:
    """Pull requests, newest first."""
    from rich.table import Table

    from branchline.store import forge as rows

    async def work(session: Session) -> list[rows.PullRequestRow]:
        async with session.store.connect() as conn:
            return await rows.list_prs(conn, session.kit.project, state)

    found = app_context(ctx).run(work)

    def human(console: Console) -> None:
        table = Table("#", "title", "branch", "commit", "state")
        for pr in found:
            table.add_row(str(pr.number), _cell(pr.title), _cell(pr.head_branch),
                          pr.head_sha[:12], pr.state)  # fmt: skip
        console.print(table if found else "no pull requests yet")

    app_context(ctx).output.emit([_pr_dict(pr) for pr in found], human)


@app.command("show")
def show(ctx: typer.Context, number: int) -> None:
    """A pull request with the comments and commit statuses pipelines posted."""
    from rich.markup import escape

    from branchline.store import forge as rows

    naming.check_pr_number(number)

    async def work(session: Session) -> dict[str, Any]:
        project = session.kit.project
        async with session.store.connect() as conn:
            pr = await rows.get_pr(conn, project, number)
            if pr is None:
                raise UsageError(
                    f"there is no pull request #{number}", hint="See `branchline pr list`."
                )
            comments = await rows.comments(conn, project, number)
            statuses = await rows.statuses(conn, project, pr.head_sha)
        preview = await session.kit.previews.get(number)
        return {
            **_pr_dict(pr),
            "preview": None if preview is None else preview_dict(preview),
            "comments": [{"key": c.key, "body": c.body, "updated_at": c.updated_at}
                         for c in comments],
            "statuses": [{"context": s.context, "state": s.state, "url": s.url,
                          "description": s.description} for s in statuses],
        }  # fmt: skip

    data = app_context(ctx).run(work)

    def human(console: Console) -> None:
        where = f"{_cell(data['head'])} -> {_cell(data['base'])}, {data['state']}"
        console.print(f"[bold]#{data['number']} {_cell(data['title'])}[/bold] ({where})")
        for status in data["statuses"]:
            console.print(
                f"  {status['context']}: {status['state']} {escape(status['description'] or '')}"
            )
        if data["preview"]:
            preview = data["preview"]
            expires = preview["expires_at"]
            until = f", expires {expires:%Y-%m-%d %H:%M}" if expires else ""
            console.print(f"  preview-{number}: {preview['status']}{until}")
            for service, url in sorted(preview["urls"].items()):
                console.print(f"    {service}: {escape(url)}")
        for comment in data["comments"]:
            console.print(f"\n[dim]{comment['key']}[/dim]\n{escape(comment['body'])}")

    app_context(ctx).output.emit(data, human)
