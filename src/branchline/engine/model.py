"""What a workflow is: a DAG of jobs, each a list of steps.

A step is a command (an argument list, never a shell string) or a call of a
named action (provider work such as "create branch"), registered by the
pipelines. Definitions are plain data so they can be stored with the run and
run by any worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from branchline.errors import UsageError


class RunIf(StrEnum):
    SUCCESS = "success"  # every dependency succeeded (or was skipped by a path filter)
    ALWAYS = "always"  # even after failures or cancellation: cleanup
    FAILURE = "failure"  # only when a dependency failed


@dataclass(frozen=True)
class Command:
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None  # relative to the job's checkout
    timeout: float | None = None  # seconds
    secrets: tuple[str, ...] = ()  # secret names exposed to it as environment variables
    # Environment variables taken from artifacts an earlier job of the same run
    # published (variable -> artifact name), like `${{ needs.x.outputs.y }}`.
    env_from: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    action: str  # a name in the action registry
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None  # seconds (None: the engine's step_timeout)


@dataclass(frozen=True)
class Step:
    name: str
    run: Command | Call
    cancellable: bool = True  # False: a cancel waits until this step is over


@dataclass(frozen=True)
class Job:
    name: str
    steps: tuple[Step, ...]
    needs: tuple[str, ...] = ()
    run_if: RunIf = RunIf.SUCCESS
    paths: tuple[str, ...] = ()  # globs; none = always run
    checkout: bool = True  # command steps run in a git worktree of the run's commit
    retries: int = 0  # extra attempts after a crash of its worker


@dataclass(frozen=True)
class Workflow:
    name: str
    jobs: tuple[Job, ...]
    concurrency_group: str | None = None
    cancel_in_progress: bool = False

    def __post_init__(self) -> None:
        validate(self)

    def job(self, name: str) -> Job:
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "concurrency_group": self.concurrency_group,
            "cancel_in_progress": self.cancel_in_progress,
            "jobs": [_job_to_dict(job) for job in self.jobs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Workflow:
        return cls(
            name=data["name"],
            concurrency_group=data.get("concurrency_group"),
            cancel_in_progress=bool(data.get("cancel_in_progress", False)),
            jobs=tuple(_job_from_dict(job) for job in data["jobs"]),
        )


def validate(workflow: Workflow) -> None:
    """Unique job names, known dependencies, no cycles, at least one step per job."""
    names = [job.name for job in workflow.jobs]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise UsageError(f"workflow {workflow.name!r} has duplicate jobs: {sorted(duplicates)}")
    for job in workflow.jobs:
        if not job.steps:
            raise UsageError(f"job {job.name!r} of {workflow.name!r} has no steps")
        unknown = set(job.needs) - set(names)
        if unknown:
            raise UsageError(
                f"job {job.name!r} needs unknown jobs {sorted(unknown)}",
                hint=f"Jobs of {workflow.name!r}: {', '.join(names)}.",
            )
    order = topological_order(workflow)
    if len(order) != len(workflow.jobs):
        cyclic = sorted(set(names) - set(order))
        raise UsageError(f"jobs {cyclic} of {workflow.name!r} depend on each other in a cycle")


def topological_order(workflow: Workflow) -> list[str]:
    done: list[str] = []
    remaining = {job.name: set(job.needs) for job in workflow.jobs}
    while True:
        ready = sorted(name for name, needs in remaining.items() if needs <= set(done))
        if not ready:
            return done
        for name in ready:
            done.append(name)
            del remaining[name]


def _step_to_dict(step: Step) -> dict[str, Any]:
    if isinstance(step.run, Command):
        run: dict[str, Any] = {
            "kind": "command",
            "args": list(step.run.args),
            "env": dict(step.run.env),
            "cwd": step.run.cwd,
            "timeout": step.run.timeout,
            "secrets": list(step.run.secrets),
            "env_from": dict(step.run.env_from),
        }
    else:
        run = {"kind": "call", "action": step.run.action, "params": dict(step.run.params)}
        if step.run.timeout is not None:  # stored only when set: older runs read the same
            run["timeout"] = step.run.timeout
    return {"name": step.name, "cancellable": step.cancellable, "run": run}


def _step_from_dict(data: Mapping[str, Any]) -> Step:
    run = data["run"]
    kind: Command | Call
    if run["kind"] == "command":
        kind = Command(
            args=tuple(run["args"]),
            env=dict(run.get("env") or {}),
            cwd=run.get("cwd"),
            timeout=run.get("timeout"),
            secrets=tuple(run.get("secrets") or ()),
            env_from=dict(run.get("env_from") or {}),
        )
    else:
        kind = Call(
            action=run["action"], params=dict(run.get("params") or {}), timeout=run.get("timeout")
        )
    return Step(name=data["name"], run=kind, cancellable=bool(data.get("cancellable", True)))


def _job_to_dict(job: Job) -> dict[str, Any]:
    return {
        "name": job.name,
        "needs": list(job.needs),
        "run_if": job.run_if.value,
        "paths": list(job.paths),
        "checkout": job.checkout,
        "retries": job.retries,
        "steps": [_step_to_dict(step) for step in job.steps],
    }


def _job_from_dict(data: Mapping[str, Any]) -> Job:
    return Job(
        name=data["name"],
        steps=tuple(_step_from_dict(step) for step in data["steps"]),
        needs=tuple(data.get("needs") or ()),
        run_if=RunIf(data.get("run_if", "success")),
        paths=tuple(data.get("paths") or ()),
        checkout=bool(data.get("checkout", True)),
        retries=int(data.get("retries", 0)),
    )
