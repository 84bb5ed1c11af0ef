"""Pure decisions over a run's jobs: which become ready, which are skipped,
and how the run ends. No I/O, so every rule is tested without a database."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from branchline.engine.model import Job, RunIf, Workflow
from branchline.engine.paths import any_matches

FINISHED = frozenset({"success", "failure", "cancelled", "skipped"})


@dataclass(frozen=True)
class JobState:
    status: str  # pending, queued, running, success, failure, cancelled, skipped
    skipped_by_paths: bool = False  # skipped because nothing under its paths changed


@dataclass
class Decision:
    enqueue: list[str] = field(default_factory=list)
    skip: dict[str, str] = field(default_factory=dict)  # job -> reason
    run_status: str | None = None  # set when the run is over


def _passes(state: JobState) -> bool:
    return state.status == "success" or (state.status == "skipped" and state.skipped_by_paths)


def _decide_job(job: Job, states: Mapping[str, JobState], cancelled: bool) -> str | None:
    """'run', a skip reason, or None (still waiting on a dependency)."""
    needs = [states[name] for name in job.needs]
    if any(state.status not in FINISHED for state in needs):
        return None
    if job.run_if is RunIf.ALWAYS:
        return "run"
    if cancelled:
        return "the run was cancelled"
    failed = any(state.status in ("failure", "cancelled") for state in needs)
    if job.run_if is RunIf.FAILURE:
        return "run" if failed else "no dependency failed"
    if all(_passes(state) for state in needs):
        return "run"
    return "a dependency did not succeed"


def decide(
    workflow: Workflow,
    states: Mapping[str, JobState],
    *,
    cancelled: bool,
    changed: Iterable[str] | None,
) -> Decision:
    """What to do next. Skips cascade within one call (a skipped job can
    unblock its own dependants), so one decision brings the run up to date."""
    states = dict(states)
    changed = list(changed) if changed is not None else None
    decision = Decision()
    progress = True
    while progress:
        progress = False
        for job in workflow.jobs:
            if states[job.name].status != "pending":
                continue
            verdict = _decide_job(job, states, cancelled)
            if verdict is None:
                continue
            progress = True
            if verdict == "run" and not any_matches(changed, job.paths):
                reason = "no changes under " + ", ".join(job.paths)
                decision.skip[job.name] = reason
                states[job.name] = JobState("skipped", skipped_by_paths=True)
            elif verdict == "run":
                decision.enqueue.append(job.name)
                states[job.name] = JobState("queued")
            else:
                decision.skip[job.name] = verdict
                states[job.name] = JobState("skipped")
    if all(state.status in FINISHED for state in states.values()):
        decision.run_status = _run_status(states, cancelled)
    return decision


def _run_status(states: Mapping[str, JobState], cancelled: bool) -> str:
    if cancelled:
        return "cancelled"
    if any(state.status in ("failure", "cancelled") for state in states.values()):
        return "failure"
    return "success"
