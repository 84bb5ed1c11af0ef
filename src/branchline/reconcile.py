"""Desired versus actual: finish or undo what a crash left half done.

Compares the store, what the providers actually run and the set of open pull
requests, then (unless `dry_run`):

- previews: removes those of closed pull requests and expired ones; a preview
  left half made (its run died) is made again when its tests passed, else removed;
- deployments: a `starting` one nobody is deploying is stopped and marked failed;
  a `draining` one is stopped;
- processes: a service process of this project that no deployment knows is stopped;
- routes: one pointing at a deployment that is not live is pointed at the live one,
  or removed when there is none;
- branches: expired ones, interrupted creations and deletions, clusters without a
  record (the database provider's gc), and ephemeral test branches no run uses.

Production is only touched where its own records say so (a dead `starting`
deployment, a route to a deployment that is no longer live).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from branchline import naming
from branchline.engine.engine import Engine
from branchline.pipelines import cleanup, preview, testing
from branchline.pipelines.kit import Kit
from branchline.providers.compute import processes
from branchline.store import artifacts as artifact_rows
from branchline.store import compute as compute_rows
from branchline.store import forge as forge_rows
from branchline.store import locks, routes
from branchline.store import previews as preview_rows
from branchline.store import runs as run_rows

_PREVIEW_ENV = re.compile(r"preview-([1-9][0-9]*)")
_PREVIEW_BRANCH = re.compile(r"pr-([1-9][0-9]*)(?:-e2e)?")
_EPHEMERAL_BRANCH = re.compile(r"(pr-[0-9]+-[0-9a-f]{8}|push-.+|preflight-.+|.+-e2e)")
STRAY_AGE = 10.0  # seconds: a process this young may be a deploy about to record it
TRIAL_AGE = 300.0  # a pre-flight trial older than this outlived its rollout


@dataclass
class Finding:
    kind: str  # preview, deployment, process, route, branch, job
    target: str
    action: str
    reason: str
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "action": self.action,
                "reason": self.reason, "done": self.done}  # fmt: skip

    def describe(self) -> str:
        verb = self.action if self.done else f"would {self.action}"
        return f"{self.kind} {self.target}: {verb} ({self.reason})"


async def reconcile(
    kit: Kit, *, engine: Engine | None = None, dry_run: bool = False
) -> list[Finding]:
    found: list[Finding] = []
    if engine is not None and not dry_run:
        for job_id in await engine.recover_dead_local_workers():
            found.append(Finding("job", str(job_id), "recover", "its worker died", True))
    found += await _previews(kit, engine, dry_run)
    found += await _deployments(kit, dry_run)
    found += await _processes(kit, dry_run)
    found += await _routes(kit, dry_run)
    found += await _branches(kit, dry_run)
    return found


# -- previews ---------------------------------------------------------------------------


async def _previews(kit: Kit, engine: Engine | None, dry_run: bool) -> list[Finding]:
    async with kit.store.connect() as conn:
        prs = {pr.number: pr for pr in await forge_rows.list_prs(conn, kit.project)}
        rows = {r.pr: r for r in await preview_rows.list_previews(conn, kit.project)}
        busy = {
            r.pr for r in await run_rows.active_runs(
                conn, kit.project, workflows=(preview.NAME, cleanup.NAME, testing.NAME)
            ) if r.pr is not None
        }  # fmt: skip
        route_envs = {r.environment for r in await routes.list_routes(conn, kit.project)}
        deployed = await compute_rows.deployments(
            conn, kit.project, statuses=("starting", "live", "draining")
        )
    numbers = {n for n, r in rows.items() if r.status != "deleted"}
    for environment in (
        route_envs
        | {d.environment for d in deployed}
        | {r.environment or "" for r in await kit.dns.list_records()}
    ):
        if m := _PREVIEW_ENV.fullmatch(environment):
            numbers.add(int(m.group(1)))
    for branch in await kit.database.list_branches():
        if m := _PREVIEW_BRANCH.fullmatch(branch.name):
            numbers.add(int(m.group(1)))
    found = []
    for number in sorted(numbers - busy):
        pr, row = prs.get(number), rows.get(number)
        if pr is None and row is None:
            continue  # no record says this environment is a pull request's preview
        reason = None
        if pr is None or pr.state != "open":
            reason = f"pull request #{number} is {pr.state if pr else 'unknown'}"
        elif (
            row is not None
            and row.expires_at is not None
            and row.expires_at.timestamp() < time.time()
        ):
            reason = "its TTL passed"
        elif row is None or row.status in ("creating", "deleting", "deleted"):
            state = row.status if row else "unrecorded"
            if (
                engine is not None
                and row is not None
                and row.status == "creating"
                and (await _tested(kit, pr.head_sha))
            ):
                found.append(await _resume(kit, engine, number, pr, dry_run))
                continue
            reason = f"left half done ({state}) by an interrupted run"
        if reason is None:
            continue
        finding = Finding("preview", naming.environment_for_pr(number), "remove", reason)
        if not dry_run:
            await cleanup.teardown(kit, number, _Quiet())
            finding.done = True
        found.append(finding)
    return found


async def _tested(kit: Kit, sha: str) -> bool:
    async with kit.store.connect() as conn:
        live, _ = await artifact_rows.find(
            conn, kit.project, testing.REPORT, sha=sha, workflow=testing.NAME
        )
    return live is not None


async def _resume(
    kit: Kit, engine: Engine, number: int, pr: forge_rows.PullRequestRow, dry_run: bool
) -> Finding:
    finding = Finding("preview", naming.environment_for_pr(number), "make again",
                      "its run died half way; its tests had passed")  # fmt: skip
    if not dry_run:
        await engine.submit(
            preview.workflow(number), triggered_by="reconcile: interrupted preview",
            repo=kit.repo, sha=pr.head_sha, pr=number, ref=pr.head_branch,
            secret_scope=naming.environment_for_pr(number),
        )  # fmt: skip
        finding.done = True
    return finding


class _Quiet:
    """The log teardown writes to, outside a run."""

    async def log(self, line: str) -> None:
        return None


# -- deployments, processes, routes ------------------------------------------------------


async def _deployments(kit: Kit, dry_run: bool) -> list[Finding]:
    found = []
    async with kit.store.connect() as conn:
        rows = await compute_rows.deployments(conn, kit.project, statuses=("starting", "draining"))
    for row in rows:
        key = f"branchline:compute:{kit.project}:deploy:{row.service}:{row.environment}"
        async with locks.if_free(kit.store, key) as conn:
            if conn is None:
                continue  # a deploy of this service is running right now
            if row.status == "draining" and time.time() - row.updated_at.timestamp() < 30:
                continue  # being retired by the deploy that replaced it
            target = f"{row.service} in {row.environment} (deployment {row.id})"
            reason = "its deploy was interrupted" if row.status == "starting" else "left draining"
            finding = Finding("deployment", target, "stop", reason)
            if not dry_run:
                pid = processes.recorded(row.detail)
                if pid is not None:
                    processes.stop(pid, grace=2.0)
                await compute_rows.update_deployment(
                    conn, row.id, status="failed" if row.status == "starting" else "stopped"
                )
                finding.done = True
            found.append(finding)
    return found


def _alive(detail: dict[str, Any]) -> bool:
    pid = processes.recorded(detail)
    return pid is not None and pid.alive()


async def _processes(kit: Kit, dry_run: bool) -> list[Finding]:
    async with kit.store.connect() as conn:
        rows = await compute_rows.deployments(
            conn, kit.project, statuses=("starting", "live", "draining")
        )
    known = {int(r.detail["pid"]) for r in rows if "pid" in r.detail}
    by_id = {r.id: r for r in rows}
    found = []
    for pid, env, age in _service_processes(kit.project, str(kit.compute.state_dir)):
        if pid in known:
            continue
        owner = by_id.get(int(env.get("BRANCHLINE_DEPLOYMENT") or 0))
        if owner is not None and not _alive(owner.detail):
            # Started for a live deployment whose recorded process is gone: its starter
            # died before recording it. Adopt it rather than start another.
            finding = Finding("process", f"pid {pid} ({owner.service} in {owner.environment})",
                              "adopt", "started for its deployment, never recorded")  # fmt: skip
            if not dry_run and await kit.compute.adopt(owner):
                finding.done = True
            found.append(finding)
            continue
        trial = env.get("BRANCHLINE_TRIAL") == "1"
        if age < (TRIAL_AGE if trial else STRAY_AGE):
            continue
        what = f"{env.get('BRANCHLINE_SERVICE', '?')} in {env.get('BRANCHLINE_ENVIRONMENT', '?')}"
        finding = Finding("process", f"pid {pid} ({what})", "stop", "no deployment knows it")
        if not dry_run:
            started = processes.start_time_of(pid)
            if started is not None:
                processes.stop(processes.ProcessId(pid, started), grace=2.0)
            finding.done = True
        found.append(finding)
    return found


def _service_processes(
    project: str, state: str | None = None
) -> list[tuple[int, dict[str, str], float]]:
    """(pid, environment, age in seconds) of every process started for `project`
    (by the branchline whose state directory is `state`, when given: two demos of one
    project on one machine must not take each other's services for strays)."""
    ticks = os.sysconf("SC_CLK_TCK")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return [
        (pid.pid, env, uptime - pid.start_time / ticks)
        for pid, env in processes.with_environment(f"BRANCHLINE_PROJECT={project}")
        if state is None or env.get("BRANCHLINE_STATE") == state
    ]


async def _routes(kit: Kit, dry_run: bool) -> list[Finding]:
    found = []
    async with kit.store.connect() as conn:
        live = {
            (d.service, d.environment): d
            for d in await compute_rows.deployments(conn, kit.project, statuses=("live",))
        }
        for route in await routes.list_routes(conn, kit.project):
            current = live.get((route.service, route.environment))
            if current is not None and route.deployment_id == current.id:
                continue
            if current is not None and "port" in current.detail:
                finding = Finding("route", route.host, "point at the live deployment",
                                  f"it pointed at deployment {route.deployment_id}")  # fmt: skip
                if not dry_run:
                    await routes.set_route(
                        conn, host=route.host, project=kit.project,
                        environment=route.environment, service=route.service,
                        port=int(current.detail["port"]), deployment_id=current.id,
                    )  # fmt: skip
                    finding.done = True
            else:
                finding = Finding("route", route.host, "remove", "no live deployment behind it")
                if not dry_run:
                    await routes.delete_route(conn, route.host)
                    finding.done = True
            found.append(finding)
    return found


# -- branches ----------------------------------------------------------------------------


async def _branches(kit: Kit, dry_run: bool) -> list[Finding]:
    found = []
    async with kit.store.connect() as conn:
        running = await run_rows.active_runs(conn, kit.project)
    if not running:  # an active run may be using an ephemeral branch right now
        for branch in await kit.database.list_branches():
            if branch.name == kit.config.database.parent or not _EPHEMERAL_BRANCH.fullmatch(
                branch.name
            ):
                continue
            if _PREVIEW_BRANCH.fullmatch(branch.name):
                continue  # pr-<n>-e2e: the preview check above decides
            finding = Finding("branch", branch.name, "delete", "no run uses this test branch")
            if not dry_run:
                await kit.database.delete_branch(branch.name)
                finding.done = True
            found.append(finding)
    gc = getattr(kit.database, "gc", None)
    if callable(gc) and not dry_run:
        report = await gc()
        for name in report.expired_deleted:
            found.append(Finding("branch", name, "delete", "expired", True))
        for name in report.interrupted_cleaned:
            found.append(Finding("branch", name, "undo", "interrupted creation or deletion", True))
        for name in report.orphan_clusters_removed:
            found.append(Finding("branch", name, "remove", "a cluster no record explains", True))
    return found
