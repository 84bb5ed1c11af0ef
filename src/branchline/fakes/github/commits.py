"""What the fake GitHub keeps about commits and GitHub's rules over it: commit statuses
(combined per ref: any failure fails, any pending or none is pending), check runs (a
conclusion completes one), deployments (a success status makes older deployments of
its environment inactive; only an inactive deployment may be deleted)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from branchline.fakes.github.records import (
    DEPLOYMENT_STATES,
    STATUS_STATES,
    Actor,
    ApiError,
    CheckRun,
    CommitStatus,
    Deployment,
    DeploymentStatus,
    invalid,
    not_found,
)
from branchline.fakes.github.shapes import now

_DEPLOYMENT_FILTERS = ("sha", "ref", "task", "environment")


class CommitRecords:
    """Statuses, check runs and deployments of one repository; ids from `next_id`,
    refs turned into commits by `resolve`."""

    def __init__(self, next_id: Callable[[], int], resolve: Callable[[str], str]) -> None:
        self._next_id = next_id
        self._resolve = resolve
        self.statuses: list[CommitStatus] = []
        self.check_runs: dict[int, CheckRun] = {}
        self.deployments: dict[int, Deployment] = {}

    # -- commit statuses and check runs ----------------------------------------------

    def add_status(self, actor: Actor, sha: str, body: dict[str, Any]) -> CommitStatus:
        if body.get("state") not in STATUS_STATES:
            raise invalid("Status", "state")
        status = CommitStatus(
            self._next_id(), sha, body["state"], body.get("context") or "default",
            body.get("description"), body.get("target_url"), actor, now(),
        )  # fmt: skip
        self.statuses.append(status)
        return status

    def combined_status(self, ref: str) -> tuple[str, str, list[CommitStatus]]:
        """(state, sha, the latest status of each context) of `ref` (a sha or a pull's
        head ref), with GitHub's rule: any error or failure fails, any pending or none
        is pending, else success."""
        sha = self._resolve(ref)
        latest: dict[str, CommitStatus] = {}
        for status in self.statuses:
            if status.sha == sha:
                latest[status.context] = status
        states = {s.state for s in latest.values()}
        if states & {"error", "failure"}:
            state = "failure"
        elif not states or "pending" in states:
            state = "pending"
        else:
            state = "success"
        return state, sha, sorted(latest.values(), key=lambda s: s.id, reverse=True)

    def check_run(self, ident: int) -> CheckRun:
        found = self.check_runs.get(ident)
        if found is None:
            raise not_found()
        return found

    def create_check_run(self, actor: Actor, body: dict[str, Any]) -> CheckRun:
        run = CheckRun(
            self._next_id(), body["head_sha"], body["name"], "queued", None, None, None,
            now(), None, {}, actor,
        )  # fmt: skip
        self.check_runs[run.id] = run
        return self.update_check_run(run.id, body)

    def update_check_run(self, ident: int, body: dict[str, Any]) -> CheckRun:
        run = self.check_run(ident)
        for key in ("name", "details_url", "external_id"):
            if key in body:
                setattr(run, key, body[key])
        if "output" in body and body["output"] is not None:
            run.output = dict(body["output"])
        if "status" in body and body["status"] is not None:
            run.status = body["status"]
        if body.get("conclusion") is not None:
            run.conclusion = body["conclusion"]
            run.status = "completed"  # a conclusion completes the run, as on GitHub
        if run.status == "completed":
            if run.conclusion is None:
                raise invalid("CheckRun", "conclusion", "missing_field",
                              "a completed check run needs a conclusion")  # fmt: skip
            run.completed = run.completed or now()
        return run

    # -- deployments -------------------------------------------------------------------

    def deployment(self, ident: int) -> Deployment:
        found = self.deployments.get(ident)
        if found is None:
            raise not_found()
        return found

    def create_deployment(self, actor: Actor, body: dict[str, Any]) -> Deployment:
        ref = body["ref"]
        environment = body.get("environment") or "production"
        moment = now()
        deployment = Deployment(
            self._next_id(), self._resolve(ref), ref, body.get("task") or "deploy", environment,
            body.get("description") or "", body.get("payload") or {},
            bool(body.get("transient_environment", False)),
            bool(body.get("production_environment", environment == "production")),
            actor, moment, moment,
        )  # fmt: skip
        self.deployments[deployment.id] = deployment
        return deployment

    def list_deployments(self, query: dict[str, str]) -> list[Deployment]:
        found = [
            d
            for d in self.deployments.values()
            if all(
                not query.get(key) or query[key] == getattr(d, key) for key in _DEPLOYMENT_FILTERS
            )
        ]
        return sorted(found, key=lambda d: d.id, reverse=True)

    def add_deployment_status(
        self, actor: Actor, ident: int, body: dict[str, Any]
    ) -> DeploymentStatus:
        deployment = self.deployment(ident)
        state = body["state"]
        if state not in DEPLOYMENT_STATES:
            raise invalid("DeploymentStatus", "state")
        environment = body.get("environment") or deployment.environment
        status = self._status(deployment, actor, state, environment, body)
        # GitHub's auto_inactive (default true): a success marks the prior
        # non-transient, non-production deployments of the environment inactive.
        if state == "success" and body.get("auto_inactive", True):
            for other in self.deployments.values():
                if (other.id < deployment.id and other.environment == environment
                        and not other.transient and not other.production
                        and self.deployment_state(other) != "inactive"):  # fmt: skip
                    self._status(other, actor, "inactive", environment, {})
        return status

    def _status(self, deployment: Deployment, actor: Actor, state: str, environment: str,
                body: dict[str, Any]) -> DeploymentStatus:  # fmt: skip
        url = body.get("environment_url") or ""
        status = DeploymentStatus(
            self._next_id(), state, body.get("description") or "", environment, url,
            body.get("log_url") or body.get("target_url") or "", actor, now(),
        )  # fmt: skip
        deployment.statuses.append(status)
        deployment.updated = status.created
        if environment != deployment.environment:
            deployment.environment = environment
        return status

    def deployment_state(self, deployment: Deployment) -> str | None:
        return deployment.statuses[-1].state if deployment.statuses else None

    def delete_deployment(self, ident: int) -> None:
        deployment = self.deployment(ident)
        # GitHub deletes only an inactive deployment: one whose last status is not a
        # success (or one that never had a status).
        if self.deployment_state(deployment) in ("success", "in_progress", "queued", "pending"):
            raise ApiError(
                422, "We cannot delete an active deployment unless it is the only "
                "deployment in a given environment.",
            )  # fmt: skip
        del self.deployments[ident]
