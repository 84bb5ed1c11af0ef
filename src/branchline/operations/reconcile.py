"""Desired versus actual: finish or undo what a crash left half done.

Compares the store, what the providers actually run and the pull requests the
code host has open, then (unless `dry_run`):

- previews: removes those of closed pull requests and expired ones; a preview
  left half made (its run died) is made again when its tests passed, else removed;
- providers: each provider that can (`Reconcilable`) finishes or undoes its own
  interrupted work: compute stops deploys nobody finishes and processes no
  deployment knows, adopts services started but never recorded, fixes routes;
- branches: ephemeral test branches no run uses; the database provider's garbage
  collection (expired branches, interrupted creations and deletions, clusters
  without a record) when it has one;
- DNS: a cloud zone's records of branchline's that no record explains (never
  another's), and records of records that are gone.

Production is only touched where its own records say so (a dead `starting`
deployment, a route to a deployment that is no longer live).
"""

from __future__ import annotations

import re
import time

from branchline.engine.engine import Engine
from branchline.environment import Environment
from branchline.errors import UsageError
from branchline.kit import Kit
from branchline.pipelines import cleanup, preview, testing
from branchline.providers.database import GarbageCollector, GcReport, SpareKeeper
from branchline.providers.forge import PullRequest
from branchline.providers.reconciling import Finding, Reconcilable
from branchline.store import artifacts as artifact_rows
from branchline.store import runs as run_rows

_PREVIEW_BRANCH = re.compile(r"pr-([1-9][0-9]*)(?:-e2e)?")
RUNNING = ("starting", "live", "draining")
_EPHEMERAL_BRANCH = re.compile(r"(pr-[0-9]+-[0-9a-f]{8}|push-.+|preflight-.+|.+-e2e)")

__all__ = ["Finding", "reconcile"]


async def reconcile(
    kit: Kit, *, engine: Engine | None = None, dry_run: bool = False
) -> list[Finding]:
    found: list[Finding] = []
    if engine is not None and not dry_run:
        for job_id in await engine.recover_dead_local_workers():
            found.append(Finding("job", str(job_id), "recover", "its worker died", True))
    found += await _previews(kit, engine, dry_run)
    if isinstance(kit.compute, Reconcilable):
        found += await kit.compute.reconcile(dry_run=dry_run)
    found += await _branches(kit, dry_run)
    # Last: a cloud zone (records no row explains) may be unreachable; the rest is done.
    if isinstance(kit.dns, Reconcilable):
        found += await kit.dns.reconcile(dry_run=dry_run)
    return found


# -- previews ---------------------------------------------------------------------------


async def _previews(kit: Kit, engine: Engine | None, dry_run: bool) -> list[Finding]:
    prs = {pr.number: pr for pr in await kit.forge.pull_requests()}
    rows = {r.pr: r for r in await kit.previews.list()}
    async with kit.store.connect() as conn:
        busy = {
            r.pr for r in await run_rows.active_runs(
                conn, kit.project, workflows=(preview.NAME, cleanup.NAME, testing.NAME)
            ) if r.pr is not None
        }  # fmt: skip
    numbers = {n for n, r in rows.items() if r.status != "deleted"}
    for deployment in await kit.compute.list_deployments():
        if deployment.status in RUNNING and deployment.environment.pr is not None:
            numbers.add(deployment.environment.pr)
    for record in await kit.dns.list_records():
        if (owner := _preview_of(record.environment or "")) is not None:
            numbers.add(owner)
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
        finding = Finding("preview", Environment.preview(number).name, "remove", reason)
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


def _preview_of(environment: str) -> int | None:
    """The pull request of a `preview-<n>` environment name found in a record."""
    try:
        return Environment.parse(environment).pr
    except UsageError:  # production, or not an environment name at all
        return None


async def _resume(kit: Kit, engine: Engine, number: int, pr: PullRequest, dry_run: bool) -> Finding:
    finding = Finding("preview", Environment.preview(number).name, "make again",
                      "its run died half way; its tests had passed")  # fmt: skip
    if not dry_run:
        await engine.submit(
            preview.workflow(number), triggered_by="reconcile: interrupted preview",
            repo=kit.repo, sha=pr.head_sha, pr=number, ref=pr.head_branch,
            secret_scope=Environment.preview(number).name,
        )  # fmt: skip
        finding.done = True
    return finding


class _Quiet:
    """The log teardown writes to, outside a run."""

    async def log(self, line: str) -> None:
        return None


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
    if isinstance(kit.database, SpareKeeper) and not dry_run:
        # The spare waits while a run works: refilling it takes half of a small
        # machine from the run's migration.
        report: GcReport | None = await kit.database.gc(keep_spare=not running)
    elif isinstance(kit.database, GarbageCollector) and not dry_run:
        report = await kit.database.gc()
    else:
        report = None
    if report is not None:
        for name in report.expired_deleted:
            found.append(Finding("branch", name, "delete", "expired", True))
        for name in report.interrupted_cleaned:
            found.append(Finding("branch", name, "undo", "interrupted creation or deletion", True))
        for name in report.orphan_clusters_removed:
            found.append(Finding("branch", name, "remove", "a cluster no record explains", True))
        root = kit.config.database.parent
        for what in report.archive_repaired:
            found.append(Finding("archive", root, "repair", what, True))
        for what in report.archive_pruned:  # wal_retention, max_archive_size
            found.append(Finding("archive", root, "prune", what, True))
        for note in report.notes:  # a failing or oversized archive is news; a spare is not
            if note.startswith(("WAL archiving", "production's WAL archive")):
                found.append(Finding("archive", root, "wait", note, False))
    return found
