"""What a GitHub Actions job tells `branchline ci`: its GITHUB_* variables and the
webhook payload GitHub wrote to GITHUB_EVENT_PATH, parsed by the same typed code
the webhook server uses (`providers.forge.github_events`), then checked against the
pipeline asked for. A payload that cannot be that pipeline's is an error; one that
fits but asks for nothing (a closed pull request for `ci preview`) is a `Skip`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from branchline import events
from branchline.errors import UsageError
from branchline.providers.forge import github_events, payloads

PIPELINES = ("testing", "preview", "production", "cleanup")
# Which GitHub events each pipeline takes (the exported workflows' `on:`).
EVENT_NAMES = {
    "testing": ("push", "pull_request"),
    "preview": ("pull_request",),
    "production": ("push",),
    "cleanup": ("pull_request",),
}
MAX_PAYLOAD = 25 * 1024**2  # GitHub's own cap on a webhook body
_RUN_ID = re.compile(r"[0-9]{1,20}")
_EXPORT_HINT = "Run it from a workflow that `branchline export github-actions` wrote."


@dataclass(frozen=True)
class ActionsJob:
    """The GitHub Actions job `branchline ci` runs in."""

    event_name: str
    event_path: Path
    sha: str
    ref: str
    repository: str
    run_id: str
    attempt: str
    server_url: str
    summary_path: Path | None

    def delivery_id(self, pipeline: str) -> str:
        """One per run attempt and pipeline: a step run again within the same attempt
        records nothing new; a re-run (a new attempt) is a new delivery."""
        return f"gha-{self.run_id}-{self.attempt}-{pipeline}"

    @property
    def run_url(self) -> str:
        return f"{self.server_url}/{self.repository}/actions/runs/{self.run_id}"


@dataclass(frozen=True)
class Skip:
    """The payload fits the pipeline but asks nothing of it: why (exit 0)."""

    reason: str


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise UsageError(
            f"{name} is not set: `branchline ci` runs inside a GitHub Actions job",
            hint=f"{_EXPORT_HINT} To try it elsewhere, set GITHUB_EVENT_PATH to a webhook "
            "payload file, GITHUB_EVENT_NAME to its event, and GITHUB_SHA, GITHUB_REF, "
            "GITHUB_REPOSITORY, GITHUB_RUN_ID as GitHub would.",
        )
    return value


def from_env(env: Mapping[str, str]) -> ActionsJob:
    """The job's description from GitHub's default variables."""
    path = _required(env, "GITHUB_EVENT_PATH")
    run_id = _required(env, "GITHUB_RUN_ID")
    attempt = env.get("GITHUB_RUN_ATTEMPT", "").strip() or "1"
    for name, value in (("GITHUB_RUN_ID", run_id), ("GITHUB_RUN_ATTEMPT", attempt)):
        if not _RUN_ID.fullmatch(value):
            raise UsageError(
                f"{name} is {value[:40]!r}, not a number",
                hint="GitHub sets it to the workflow run's id (and attempt); leave it to GitHub.",
            )
    summary = env.get("GITHUB_STEP_SUMMARY", "").strip()
    return ActionsJob(
        event_name=_required(env, "GITHUB_EVENT_NAME"),
        event_path=Path(path),
        sha=env.get("GITHUB_SHA", "").strip(),
        ref=env.get("GITHUB_REF", "").strip(),
        repository=_required(env, "GITHUB_REPOSITORY"),
        run_id=run_id,
        attempt=attempt,
        server_url=(env.get("GITHUB_SERVER_URL", "").strip() or "https://github.com").rstrip("/"),
        summary_path=Path(summary) if summary else None,
    )


def read_payload(job: ActionsJob) -> github_events.Payload:
    """The typed payload of the job's event; a clear error when it is missing,
    unreadable or not what its event name says."""
    if job.event_name not in github_events.HANDLED:
        raise UsageError(
            f"branchline ci runs for push and pull_request events, not {job.event_name!r}",
            hint="Trigger the workflow `on: push` or `on: pull_request` (as the exported "
            "ones do); rollbacks are `branchline rollback`.",
        )
    try:
        with job.event_path.open("rb") as file:
            body = file.read(MAX_PAYLOAD + 1)
    except OSError as exc:
        raise UsageError(
            f"cannot read the event payload {job.event_path}: {exc.strerror or exc}",
            hint="GITHUB_EVENT_PATH must name the JSON file GitHub writes for the job; "
            "do not override it in the workflow.",
        ) from None
    if len(body) > MAX_PAYLOAD:
        raise UsageError(
            f"the event payload {job.event_path} is larger than 25 MB",
            hint="GITHUB_EVENT_PATH must name the webhook payload GitHub wrote.",
        )
    try:
        typed = github_events.validate(job.event_name, payloads.parse_json(body))
    except payloads.MalformedPayloadError as exc:
        raise UsageError(
            f"the event payload {job.event_path} is not a {job.event_name} event: {exc}",
            hint="GITHUB_EVENT_NAME must be the event the payload is of "
            "(GitHub sets both; do not override them).",
        ) from None
    assert typed is not None and not isinstance(typed, payloads.PingPayload)
    return typed


def event_for(
    pipeline: str, job: ActionsJob, payload: github_events.Payload, production_branch: str
) -> events.Event | Skip:
    """The event the pipeline runs for, or why it has nothing to do."""
    if job.event_name not in EVENT_NAMES[pipeline]:
        takes = " or ".join(EVENT_NAMES[pipeline])
        raise UsageError(
            f"`branchline ci {pipeline}` runs on a {takes} event, not {job.event_name}",
            hint=f"Trigger it `on: {EVENT_NAMES[pipeline][0]}` as the exported "
            f"{pipeline}.yml does (`branchline export github-actions`).",
        )
    event = github_events.event_of(payload)
    if event is None:
        what = "a tag" if isinstance(payload, payloads.PushPayload) else "this action"
        return Skip(f"{job.event_name} of {what} starts nothing in branchline")
    if isinstance(event, events.Push):
        if job.sha and not event.deleted and job.sha != event.after:
            raise UsageError(
                f"GITHUB_SHA {job.sha[:12]} is not the pushed commit {event.after[:12]} "
                f"of the payload {job.event_path}",
                hint="GitHub sets both for the same push: do not override GITHUB_SHA or "
                "GITHUB_EVENT_PATH in the workflow.",
            )
        return _push(pipeline, event, production_branch)
    if isinstance(event, events.PullRequestApproved):
        if pipeline == "preview":
            return event
        return Skip(f"an approval label starts no {pipeline} run")
    assert isinstance(event, events.PullRequestChanged)
    return _pull_request(pipeline, event)


def _push(pipeline: str, event: events.Push, production_branch: str) -> events.Event | Skip:
    if event.deleted:
        return Skip(f"branch {event.branch} was deleted: nothing to {pipeline}")
    if pipeline == "production" and event.branch != production_branch:
        return Skip(
            f"a push to {event.branch} does not roll out: only {production_branch} "
            "goes to production"
        )
    return event


def _pull_request(pipeline: str, event: events.PullRequestChanged) -> events.Event | Skip:
    closed = event.action == "closed"
    if pipeline == "cleanup":
        if not closed:
            return Skip(f"pull request #{event.number} is {event.action}, not closed: "
                        "nothing to clean up")  # fmt: skip
        return event
    if closed:
        what = "test" if pipeline == "testing" else "preview"
        return Skip(
            f"pull request #{event.number} was closed: nothing to {what} "
            "(cleanup.yml removes its preview)"
        )
    return event


@dataclass(frozen=True)
class Loaded:
    """The job's event as `pipeline` takes it: what to run, or why nothing."""

    target: events.Event | Skip
    head_repo: str  # a fork's "owner/name" ("" for the repository's own branches)


def load(pipeline: str, job: ActionsJob, production_branch: str) -> Loaded:
    payload = read_payload(job)
    head_repo = payload.head_repository if isinstance(payload, payloads.PullRequestPayload) else ""
    return Loaded(event_for(pipeline, job, payload, production_branch), head_repo)
