"""The engine: submits runs, enqueues their jobs as procrastinate tasks, runs a
job's steps on a worker, and moves each run along when a job finishes.

Every state change is written to the store first; a job becomes a procrastinate
task only after its row says `queued` (a queueing lock per job makes a repeated
enqueue harmless), so a crash between the two is repaired by `recover`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import procrastinate
from procrastinate.jobs import Status
from psycopg.conninfo import conninfo_to_dict

from branchline.engine import runner
from branchline.engine.checkout import checked_out, git_dir, remove_checkout, sweep_checkouts
from branchline.engine.decide import JobState, decide
from branchline.engine.logcap import Line, StepLogCap, chunked, line_size
from branchline.engine.model import Command, Job, RunIf, Workflow
from branchline.engine.paths import changed_files
from branchline.errors import BranchlineError, UsageError
from branchline.events import WorkflowFinished
from branchline.masking import SEALED_PREFIX, mask, mask_url
from branchline.postgres.cluster import process_alive
from branchline.sandbox import Box, Sandbox
from branchline.store import Store, retention
from branchline.store import artifacts as artifact_rows
from branchline.store import forge as forge_rows
from branchline.store import runs as rows
from branchline.store.queries import Conn

logger = logging.getLogger(__name__)
_COMMIT = re.compile(r"[0-9a-f]{7,64}")
QUEUE = "branchline"
TASK = "branchline.run_job"
HAND_BACK_TIMEOUT = 15.0  # seconds a stopping worker spends handing a job back


class Unknown:
    """`changed` not given: the engine asks git."""


UNKNOWN = Unknown()
SecretSource = Callable[[rows.RunRow], Awaitable[Mapping[str, str]]]
# Jobs this process runs now (a worker's name is its host and pid, so this is one set
# for every engine in it): a job claimed by this process but not among them was
# abandoned (the state database died under it while the worker went on).
IN_FLIGHT: set[int] = set()


class Sealer(Protocol):
    """Seals a sensitive artifact (a branch's DATABASE_URL) before it is stored, so the
    state database never holds it in plain text; `label` binds it to its place."""

    def seal(self, value: str, label: str) -> str: ...

    def unseal(self, value: str, label: str) -> str: ...


async def no_secrets(_run: rows.RunRow) -> Mapping[str, str]:
    return {}


class ArtifactMissingError(BranchlineError):
    """A workflow needs an artifact that an earlier run did not leave (or that expired)."""

    default_hint = "Run the workflow that publishes it first (for a preview: the testing run)."


@dataclass(frozen=True)
class EngineOptions:
    grace: float = 5.0  # seconds between SIGTERM and SIGKILL
    heartbeat: float = 2.0  # worker heartbeat interval
    stalled_after: float = 10.0  # a worker silent this long is dead
    recover_every: float = 2.0  # how often a worker looks for dead workers' jobs
    cancel_poll: float = 0.2  # how often a running step checks for a cancel
    poll: float = 5.0  # a worker looks for jobs this often even without a notification
    # A stopping worker waits this long for its running jobs, then stops their steps
    # and hands the jobs back (retried by the next worker), rather than forever.
    stop_grace: float = 30.0
    # A running job holds two connections and briefly a third: size for the concurrency.
    pool_size: int = 20
    workdir: Path | None = None  # where job checkouts go (default: the system's temp dir)
    step_log: int = 5 * 1024**2  # bytes of one step's log kept: its head and its tail
    step_timeout: float = 3600.0  # seconds a step without a deadline of its own may run
    # Finished runs, their logs and their artifacts are deleted after these many
    # seconds (None: kept); checked every `prune_every` seconds.
    retain_runs: float | None = 30 * 86400.0
    retain_logs: float | None = 30 * 86400.0
    retain_artifacts: float | None = 30 * 86400.0
    prune_every: float = 600.0
    # The queue this engine's runs are worked from and its worker works: QUEUE, or one
    # of a single process's own (`branchline ci`: a runner works its run and nothing
    # else, whatever else shares the state database). Stored with each run.
    queue: str = QUEUE


class Engine:
    """Construction does no I/O: the procrastinate app opens in `open()`."""

    def __init__(
        self,
        store: Store,
        *,
        project: str,
        actions: Mapping[str, runner.Action] | None = None,
        secrets: SecretSource = no_secrets,
        options: EngineOptions | None = None,
        sandbox: Sandbox | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        self.store = store
        self.project = project
        self.actions = dict(actions or {})
        self.secrets = secrets
        self.options = options or EngineOptions()
        self.sealer = sealer
        # Command steps run code from the run's commit: boxed (off only on purpose).
        self.sandbox = sandbox or Sandbox.configure(
            enabled=False, protected=(), path=os.environ.get("PATH", os.defpath).split(os.pathsep)
        )
        self.host = socket.gethostname()
        self.in_flight = IN_FLIGHT
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=store.url))
        self.app.task(name=TASK, queue=QUEUE, pass_context=True)(self._task)

    @contextlib.asynccontextmanager
    async def open(self) -> Any:
        async with self.store.pooled(max_size=self.options.pool_size), self.app.open_async():
            yield self

    # -- submitting -------------------------------------------------------

    async def submit(
        self,
        workflow: Workflow,
        *,
        triggered_by: str,
        repo: Path | None = None,
        sha: str | None = None,
        base_sha: str | None = None,
        ref: str | None = None,
        pr: int | None = None,
        secret_scope: str | None = None,
        rerun_of: int | None = None,
        event_id: int | None = None,
        changed: list[str] | Unknown | None = UNKNOWN,
    ) -> int:
        """Record a run and start it, or queue it behind its concurrency group.
        `changed`: the files `base_sha..sha` changed, when the caller knows them (the
        code host's list); by default git's diff of the two in `repo`."""
        for commit in (sha, base_sha):
            # Commits reach git as arguments: only ids, never anything option-like.
            if commit is not None and not _COMMIT.fullmatch(commit):
                raise UsageError(
                    f"{commit[:80]!r} is not a commit id", hint="Pass a full or short hex id."
                )
        if isinstance(changed, Unknown):
            changed = (
                await asyncio.to_thread(changed_files, repo, base_sha, sha)
                if (repo and sha)
                else None
            )
        definition: dict[str, Any] = {"workflow": workflow.to_dict(), "changed": changed}
        if self.options.queue != QUEUE:
            definition["queue"] = self.options.queue
        jobs = [
            (job.name, list(job.needs), job.run_if.value, [s.name for s in job.steps])
            for job in workflow.jobs
        ]
        async with self.store.connect() as conn, conn.transaction():
            run_id = await rows.insert_run(
                conn,
                project=self.project,
                workflow=workflow.name,
                definition=definition,
                jobs=jobs,
                triggered_by=triggered_by,
                ref=ref,
                sha=sha,
                base_sha=base_sha,
                pr=pr,
                repo=str(repo) if repo else None,
                concurrency_group=workflow.concurrency_group,
                cancel_in_progress=workflow.cancel_in_progress,
                secret_scope=secret_scope,
                rerun_of=rerun_of,
                event_id=event_id,
            )
            if workflow.concurrency_group and await self._must_wait(conn, run_id, workflow):
                await rows.set_run(conn, run_id, status="waiting")
        await self.advance(run_id)
        return run_id

    async def _must_wait(self, conn: Conn, run_id: int, workflow: Workflow) -> bool:
        group = workflow.concurrency_group
        assert group is not None
        # One submitter of a group at a time decides who waits for whom.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"branchline:group:{self.project}:{group}",),
        )
        older = await rows.active_in_group(conn, self.project, group, run_id)
        if workflow.cancel_in_progress:
            for run in older:
                await rows.set_run(
                    conn, run.id, cancel_requested=True,
                    cancelled_by=f"run {run_id} (newer, in concurrency group {group})",
                )  # fmt: skip
        return bool(older)

    async def get_run(self, run_id: int) -> rows.RunRow:
        async with self.store.connect() as conn:
            run = await rows.get_run(conn, run_id)
        if run is None or run.project != self.project:  # another project's runs are not ours
            raise UsageError(f"there is no run {run_id}", hint="See `branchline runs list`.")
        return run

    async def rerun(self, run_id: int, *, workflow: Workflow | None = None) -> int:
        """Run `run_id` again as a new run: its workflow as stored, or `workflow`."""
        run = await self.get_run(run_id)
        return await self.submit(
            workflow or Workflow.from_dict(run.definition["workflow"]),
            triggered_by=f"rerun of {run_id}",
            repo=Path(run.repo) if run.repo else None,
            sha=run.sha,
            base_sha=run.base_sha,
            ref=run.ref,
            pr=run.pr,
            secret_scope=run.secret_scope,
            rerun_of=run_id,
        )

    async def cancel(self, run_id: int, *, by: str) -> bool:
        """Ask a run to stop: running steps are stopped, `always` jobs still run.
        `by` (who asks) is what every stopped step's log says."""
        async with self.store.connect() as conn:
            run = await rows.get_run(conn, run_id)
            if run is None or run.project != self.project:
                raise UsageError(f"there is no run {run_id}", hint="See `branchline runs list`.")
            if run.status not in rows.ACTIVE:
                return False
            await rows.set_run(conn, run_id, cancel_requested=True, cancelled_by=by)
        await self.advance(run_id)
        return True

    # -- moving a run along -------------------------------------------------

    async def advance(self, run_id: int) -> None:
        """Bring the run up to date: enqueue ready jobs, skip the rest, finish the run,
        then start the next waiting run of its group."""
        to_enqueue: list[int] = []
        next_run: int | None = None
        async with self.store.connect() as conn, conn.transaction():
            run = await rows.get_run(conn, run_id, lock=True)
            if run is None or run.status in ("success", "failure", "cancelled"):
                return
            if run.status == "waiting" and not run.cancel_requested:
                return
            workflow = Workflow.from_dict(run.definition["workflow"])
            jobs = {job.name: job for job in await rows.jobs_of(conn, run_id)}
            states = {
                name: JobState(job.status, job.status == "skipped" and _by_paths(job.error))
                for name, job in jobs.items()
            }
            decision = decide(
                workflow,
                states,
                cancelled=run.cancel_requested,
                changed=run.definition.get("changed"),
            )
            for name, reason in decision.skip.items():
                await rows.set_job(
                    conn, jobs[name].id, status="skipped", error=reason, finished_at=runner.now()
                )
            for name in decision.enqueue:
                await rows.set_job(conn, jobs[name].id, status="queued", enqueued_at=runner.now())
                to_enqueue.append(jobs[name].id)
            if decision.run_status is not None:
                await rows.set_run(
                    conn, run_id, status=decision.run_status, finished_at=runner.now()
                )
                # In the same transaction: what follows a run (a preview after testing)
                # is an event like any other, processed exactly once.
                finished = WorkflowFinished(
                    run_id, run.workflow, decision.run_status, run.sha, run.ref, run.pr
                )
                await forge_rows.record(
                    conn, self.project, finished, delivery_id=f"run-{run_id}-completed",
                    source="pipeline",
                )  # fmt: skip
                if run.concurrency_group:
                    next_run = await rows.next_waiting(conn, self.project, run.concurrency_group)
                    if next_run is not None:
                        await rows.set_run(conn, next_run, status="queued")
            elif run.status in ("queued", "waiting"):
                await rows.set_run(conn, run_id, status="running", started_at=runner.now())
        for job_id in to_enqueue:
            await self._enqueue(job_id)
        if next_run is not None:
            await self.advance(next_run)

    async def _enqueue(self, job_id: int) -> None:
        # The run's own queue, whichever engine moves it along (a newer run's, a recovery).
        async with self.store.connect() as conn:
            cur = await conn.execute(
                """SELECT r.definition->>'queue' FROM branchline.jobs j
                   JOIN branchline.runs r ON r.id = j.run_id WHERE j.id = %s""",
                (job_id,),
            )
            row = await cur.fetchone()
        queue = str(row[0]) if row and row[0] else QUEUE
        with contextlib.suppress(procrastinate.exceptions.AlreadyEnqueued):
            await self.app.configure_task(
                TASK, queue=queue, queueing_lock=f"job-{job_id}"
            ).defer_async(job_id=job_id)

    # -- running a job (on a worker) ------------------------------------------

    async def _task(self, context: procrastinate.JobContext, job_id: int) -> None:
        await self.run_job(job_id)

    async def run_job(self, job_id: int) -> None:
        self.in_flight.add(job_id)
        try:
            await self._run_job(job_id)
        except asyncio.CancelledError:
            # The worker stops (past its stop grace): the job's steps are stopped by
            # now; hand the job back at once instead of leaving it "running" until a
            # recovery pass somewhere notices.
            self.in_flight.discard(job_id)
            await asyncio.shield(self._hand_back(job_id))
            raise
        finally:
            self.in_flight.discard(job_id)

    async def _hand_back(self, job_id: int) -> None:
        """Retry (or fail) a job this worker stopped while it ran. Best effort, and
        bounded: the state database may be what is going away; then the recovery
        passes of the next worker take the job."""
        try:
            async with asyncio.timeout(HAND_BACK_TIMEOUT):
                await self._recover_job(job_id, "its worker stopped while it ran", extra_attempts=1)
        except Exception as exc:
            logger.warning(
                "job %s: could not hand it back (%s); a recovery pass will",
                job_id, mask_url(str(exc)),
            )  # fmt: skip

    async def _run_job(self, job_id: int) -> None:
        async with self.store.connect() as conn:
            job = await rows.get_job(conn, job_id)
            run = await rows.get_run(conn, job.run_id) if job else None
            if job is None or run is None:
                return
            spec = Workflow.from_dict(run.definition["workflow"]).job(job.name)
            if run.cancel_requested and spec.run_if is not RunIf.ALWAYS:
                if await rows.claim_job(conn, job_id, status="cancelled"):
                    await rows.set_job(
                        conn, job_id, finished_at=runner.now(),
                        error=_cancelled(run.cancelled_by),
                        error_code="cancelled",
                    )  # fmt: skip
            elif await rows.claim_job(conn, job_id, status="running", worker=self._worker_name()):
                try:
                    status, error, code = await self._run_steps(conn, run, job, spec)
                except Exception as exc:  # a job must end, or its run never reaches cleanup
                    status, code = "failure", "internal"
                    error = mask(f"{type(exc).__name__}: {exc}", await self._secret_values(run))
                await rows.set_job(
                    conn, job_id, status=status, error=error, error_code=code,
                    finished_at=runner.now(),
                )  # fmt: skip
        await self.advance(job.run_id)

    async def _secret_values(self, run: rows.RunRow) -> list[str]:
        with contextlib.suppress(Exception):
            return list((await self.secrets(run)).values())
        return []

    async def _run_steps(
        self, conn: Conn, run: rows.RunRow, job: rows.JobRow, spec: Job
    ) -> tuple[str, str | None, str | None]:
        steps = await rows.steps_of(conn, job.id)
        secrets = dict(await self.secrets(run))
        logs = _LogWriter(self.store, run.id, job.id, self.options.step_log)
        needs_checkout = spec.checkout and any(isinstance(s.run, Command) for s in spec.steps)
        try:
            async with logs:
                checkout: contextlib.AbstractAsyncContextManager[Path | None]
                if needs_checkout and run.repo and run.sha:
                    checkout = checked_out(
                        Path(run.repo), run.sha, parent=self.options.workdir,
                        prepare=self.sandbox.hand_over,
                    )  # fmt: skip
                else:
                    checkout = contextlib.nullcontext(None)
                async with checkout as cwd:
                    if cwd is not None:
                        # Recorded: if this worker dies, recovery removes it.
                        await rows.set_job(conn, job.id, checkout=str(cwd.parent))
                        await logs.write("system", self.sandbox.describe())
                    return await self._steps_in(conn, run, spec, steps, secrets, logs, cwd)
        except BranchlineError as exc:
            return "failure", exc.message, exc.code

    async def _steps_in(
        self,
        conn: Conn,
        run: rows.RunRow,
        spec: Job,
        steps: list[rows.StepRow],
        secrets: dict[str, str],
        logs: _LogWriter,
        cwd: Path | None,
    ) -> tuple[str, str | None, str | None]:
        result: tuple[str, str | None, str | None] = ("success", None, None)
        # A cancel stops a run's work, never its cleanup: `always` jobs run to the end.
        cleanup = spec.run_if is RunIf.ALWAYS
        for row, step in zip(steps, spec.steps, strict=True):
            cancellable = step.cancellable and not cleanup
            if result[0] != "success":
                await rows.set_step(conn, row.id, status="skipped")
                continue
            stop = await self._cancel_requested(run.id) if cancellable else None
            if stop is not None:
                await rows.set_step(conn, row.id, status="cancelled")
                await logs.write("system", stop)
                result = ("cancelled", stop, "cancelled")
                continue
            await rows.set_step(conn, row.id, status="running", started_at=runner.now())
            logs.step_id = row.id
            outcome = await self._run_step(conn, run, row, step.run, cancellable,
                                           secrets, logs, cwd)  # fmt: skip
            logs.end_step()
            await logs.flush()
            await rows.set_step(
                conn, row.id, status=outcome.status, exit_code=outcome.exit_code,
                finished_at=runner.now(), pgid=None,
            )  # fmt: skip
            if outcome.status != "success":
                result = (outcome.status, f"step {step.name!r}: {outcome.error}", outcome.code)
        return result

    async def _run_step(
        self,
        conn: Conn,
        run: rows.RunRow,
        row: rows.StepRow,
        what: Any,
        cancellable: bool,
        secrets: dict[str, str],
        logs: _LogWriter,
        cwd: Path | None,
    ) -> runner.StepOutcome:
        if isinstance(what, Command):
            if cwd is None:
                return runner.StepOutcome("failure", None, "command step without a checkout")

            async def started(pgid: int) -> None:
                await rows.set_step(conn, row.id, pgid=pgid, host=self.host)

            watch = self._watch(run, cancellable, started)
            try:
                self.sandbox.check()
                env = _step_env(self.sandbox.base_env(own=cwd), run, what, secrets)
                outputs, hidden = await self._outputs(run, what)
            except BranchlineError as exc:
                await logs.write("system", f"{exc.message} ({exc.hint})")
                return runner.StepOutcome("failure", None, exc.message)
            env.update(outputs)
            masked = {**secrets, **hidden}
            # Its worktree, writable; the repository's history read-only (tests and
            # builds ask git for the commit), never the checkout it belongs to.
            history = await asyncio.to_thread(git_dir, Path(run.repo)) if run.repo else None
            box = Box(writable=(cwd,), readable=(history,) if history else (), with_parent=True)
            return await runner.run_command(
                what, cwd=cwd, env=env, secrets=masked, sink=logs.write, watch=watch,
                wrap=lambda argv, workdir: self.sandbox.wrap(argv, box, cwd=workdir),
            )  # fmt: skip
        context = _Context(self, run, secrets, logs)
        return await runner.run_call(
            what, self.actions, context, logs.write, self._watch(run, cancellable)
        )

    def _watch(
        self,
        run: rows.RunRow,
        cancellable: bool,
        started: Callable[[int], Awaitable[None]] | None = None,
    ) -> runner.ProcessWatch:
        """How a step learns it must stop: a cancel of its run, or its deadline."""

        async def nothing(_pgid: int) -> None:
            return None

        return runner.ProcessWatch(
            should_cancel=lambda: self._cancel_requested(run.id),
            on_started=started or nothing,
            grace=self.options.grace,
            poll=self.options.cancel_poll,
            cancellable=cancellable,
            timeout=self.options.step_timeout,
        )

    async def _outputs(
        self, run: rows.RunRow, command: Command
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The step's `env_from` values, and those of them to mask (sensitive ones)."""
        env: dict[str, str] = {}
        hidden: dict[str, str] = {}
        async with self.store.connect() as conn:
            for var, name in command.env_from.items():
                live, _expired = await artifact_rows.find(conn, self.project, name, run_id=run.id)
                if live is None or live.value is None:
                    raise BranchlineError(
                        f"this step needs the artifact {name!r}, which no earlier job of "
                        f"run {run.id} published",
                        hint="A job that reads an artifact must `need` the job publishing it.",
                    )
                value = self._opened(live)
                env[var] = value
                if live.sensitive:
                    hidden[f"artifact:{name}"] = value
                    password = _password_in(value)
                    if password:
                        hidden[f"artifact:{name}:password"] = password
        return env, hidden

    def _opened(self, artifact: artifact_rows.ArtifactRow) -> str:
        """An artifact's value, unsealed when it was stored sealed."""
        assert artifact.value is not None
        if artifact.sensitive and self.sealer is not None and is_sealed(artifact.value):
            return self.sealer.unseal(artifact.value, f"artifact:{artifact.name}")
        return artifact.value

    async def _cancel_requested(self, run_id: int) -> str | None:
        """Why the run must stop ("cancelled by ..."), or None while it need not."""
        async with self.store.connect() as conn:
            cur = await conn.execute(
                "SELECT cancel_requested, cancelled_by FROM branchline.runs WHERE id = %s",
                (run_id,),
            )
            row = await cur.fetchone()
        return _cancelled(str(row[1]) if row[1] else None) if row and row[0] else None

    # -- workers and recovery ---------------------------------------------------

    async def run_worker(
        self, *, concurrency: int = 2, install_signal_handlers: bool = True
    ) -> None:
        """Work the queue until stopped (SIGINT/SIGTERM), recovering dead workers' jobs."""
        recovery = asyncio.create_task(self._recover_forever())
        try:
            await self.app.run_worker_async(
                queues=[self.options.queue],
                concurrency=concurrency,
                install_signal_handlers=install_signal_handlers,
                update_heartbeat_interval=self.options.heartbeat,
                shutdown_graceful_timeout=self.options.stop_grace,
                stalled_worker_timeout=self.options.stalled_after,
                fetch_job_polling_interval=self.options.poll,  # NOTIFY wakes it sooner
                delete_jobs="successful",
            )
        finally:
            recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovery

    async def _recover_forever(self) -> None:
        pruned_at = -math.inf
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.recover()
                async with self.store.connect() as conn:
                    await artifact_rows.prune(conn)
                if loop.time() - pruned_at >= self.options.prune_every:
                    pruned_at = loop.time()
                    await self.prune()
            except Exception as exc:  # the state database may be restarting: try again
                logger.warning("recovery pass failed: %s", mask_url(str(exc)))
            await asyncio.sleep(self.options.recover_every)

    async def prune(self) -> dict[str, Any]:
        """Retention: delete finished runs, logs and artifacts past their periods
        (never a running run, never those of production's live release), then the
        job checkouts on this host that no live job owns. Returns what went."""
        options = self.options
        async with self.store.connect() as conn:
            done = await retention.prune(
                conn, self.project, runs=_days(options.retain_runs),
                logs=_days(options.retain_logs), artifacts=_days(options.retain_artifacts),
            )  # fmt: skip
            keep = await retention.live_checkouts(conn)
        swept = await asyncio.to_thread(sweep_checkouts, options.workdir, keep)
        if done.runs or done.log_rows or swept:
            logger.info(
                "retention: %d runs, %d log rows, %d artifacts deleted; %d checkouts swept",
                done.runs, done.log_rows, done.artifacts, len(swept),
            )  # fmt: skip
        return {**done.as_dict(), "checkouts": [str(path) for path in swept]}

    async def recover(self) -> list[int]:
        """Jobs of workers that stopped sending heartbeats: kill what is left of their
        steps, fail (or retry) the job, and move its run along. Returns the job ids."""
        stalled = await self.app.job_manager.get_stalled_jobs(
            task_name=TASK, seconds_since_heartbeat=self.options.stalled_after
        )
        recovered = []
        for task in stalled:
            job_id = int(str(task.task_kwargs["job_id"]))
            async with self.store.connect() as conn:
                job = await rows.get_job(conn, job_id)
            if job is not None and job.worker == self._worker_name() and job_id in self.in_flight:
                # Its worker is this very process, which runs this code: alive, its
                # heartbeat only came late. Killing its step would lose the work.
                logger.warning(
                    "job %s: this worker's heartbeat was more than %g s late; the job goes on",
                    job_id, self.options.stalled_after,
                )  # fmt: skip
                continue
            worker = job.worker if job is not None and job.worker else "unknown"
            await self._recover_job(
                job_id,
                f"stalled: no heartbeat for {self.options.stalled_after:g} s from worker {worker}",
            )
            await self.app.job_manager.finish_job(task, status=Status.FAILED, delete_job=False)
            recovered.append(job_id)
        for job_id in await self._lost_jobs():
            await self._enqueue(job_id)
            recovered.append(job_id)
        recovered += await self.recover_abandoned()
        await self.advance_stuck_runs()
        return recovered

    async def recover_abandoned(self, older_than: float = 10.0) -> list[int]:
        """Jobs whose task this process's worker took but no longer runs: the state
        database died under them, so neither the job's end nor the task's could be
        written, while the worker (alive, heartbeating) went on. A job marked
        running by this process but not in flight here is recovered (retried or
        failed); a queued job whose task was taken `older_than` seconds ago and never
        claimed is queued again. Their tasks are marked failed. Returns the job ids."""
        async with self.store.connect() as conn:
            cur = await conn.execute(
                """SELECT j.id, j.status, p.id FROM branchline.jobs j
                   JOIN branchline.runs r ON r.id = j.run_id
                   LEFT JOIN procrastinate_jobs p
                     ON p.queueing_lock = 'job-' || j.id AND p.status = 'doing'
                    AND p.task_name = %s
                   WHERE r.project = %s AND (
                         (j.status = 'running' AND j.worker = %s)
                      OR (j.status = 'queued' AND p.id IS NOT NULL AND NOT EXISTS (
                            SELECT 1 FROM procrastinate_events e WHERE e.job_id = p.id
                              AND e.at > now() - make_interval(secs => %s))))""",
                (TASK, self.project, self._worker_name(), older_than),
            )
            found = [(int(r[0]), str(r[1]), r[2]) for r in await cur.fetchall()]  # type: ignore[call-overload]
        recovered = []
        for job_id, status, task_id in found:
            if job_id in self.in_flight:
                continue
            if task_id is not None:
                await self.app.job_manager.finish_job_by_id_async(
                    int(str(task_id)), status=Status.FAILED, delete_job=False
                )
            if status == "running":
                # branchline's own fault, not the job's: one attempt more than its
                # `retries` allow, so a restart of the state database fails no test.
                await self._recover_job(
                    job_id, "the state database went away while it ran", extra_attempts=1
                )
            else:
                await self._enqueue(job_id)
            recovered.append(job_id)
        return recovered

    async def advance_stuck_runs(self) -> list[int]:
        """Runs that are running (or queued to start) with no job queued or running: a
        crash, or the state database dying, between a job's end or a run's start
        (recorded) and the run's advance (not). Advancing again is safe: advance
        locks the run and only does what is still undone. Returns the run ids."""
        async with self.store.connect() as conn:
            cur = await conn.execute(
                """SELECT r.id FROM branchline.runs r
                   WHERE r.project = %s AND r.status IN ('running', 'queued')
                     AND NOT EXISTS (
                         SELECT 1 FROM branchline.jobs j
                         WHERE j.run_id = r.id AND j.status IN ('queued', 'running'))""",
                (self.project,),
            )
            stuck = [int(row[0]) for row in await cur.fetchall()]  # type: ignore[call-overload]
        for run_id in stuck:
            await self.advance(run_id)
        return stuck

    async def recover_dead_local_workers(self) -> list[int]:
        """Jobs whose worker ran on this host and is gone (killed, crashed): recovered
        at once, without waiting for its heartbeat to go stale. Returns the job ids."""
        async with self.store.connect() as conn:
            cur = await conn.execute(
                """SELECT j.id, j.worker FROM branchline.jobs j
                   JOIN branchline.runs r ON r.id = j.run_id
                   WHERE r.project = %s AND j.status = 'running' AND j.worker LIKE %s""",
                (self.project, f"{self.host}:%"),
            )
            found = [(int(row[0]), str(row[1])) for row in await cur.fetchall()]  # type: ignore[call-overload]
        recovered = []
        for job_id, worker in found:
            pid = int(worker.rsplit(":", 1)[1])
            if pid == os.getpid() or process_alive(pid):
                continue
            await self._recover_job(job_id, f"its worker {worker} is gone (killed or crashed)")
            recovered.append(job_id)
        await self.advance_stuck_runs()
        return recovered

    async def _lost_jobs(self, older_than: float = 5.0) -> list[int]:
        """Jobs marked queued whose task never reached the queue: a crash between the
        store's commit and the enqueue. Enqueueing them again is safe (queueing lock)."""
        async with self.store.connect() as conn:
            cur = await conn.execute(
                """SELECT j.id FROM branchline.jobs j JOIN branchline.runs r ON r.id = j.run_id
                   WHERE r.project = %s AND j.status = 'queued'
                     AND j.enqueued_at < now() - make_interval(secs => %s)
                     AND NOT EXISTS (
                         SELECT 1 FROM procrastinate_jobs p
                         WHERE p.queueing_lock = 'job-' || j.id
                           AND p.status IN ('todo', 'doing'))""",
                (self.project, older_than),
            )
            return [int(row[0]) for row in await cur.fetchall()]  # type: ignore[call-overload]

    def _worker_name(self) -> str:
        return f"{self.host}:{os.getpid()}"

    async def _recover_job(self, job_id: int, why: str, *, extra_attempts: int = 0) -> None:
        """Stop what is left of a job whose worker died (or went silent), saying `why`
        in its log, then retry it (within its `retries`, plus `extra_attempts`) or
        fail it."""
        async with self.store.connect() as conn:
            job = await rows.get_job(conn, job_id)
            if job is None:
                return
            if job.status not in ("running", "queued"):
                # It ended, but its worker died before moving the run along.
                await self.advance(job.run_id)
                return
            run = await rows.get_run(conn, job.run_id)
            assert run is not None
            spec = Workflow.from_dict(run.definition["workflow"]).job(job.name)
            for step in await rows.steps_of(conn, job_id):
                if step.status != "running":
                    continue
                stopping = step.pgid and step.host == self.host
                said = f"{why}; {'its step is stopped' if stopping else 'the step is abandoned'}"
                await rows.insert_logs(
                    conn, [(run.id, job_id, step.id, "system", said, runner.now())]
                )
                if stopping:
                    assert step.pgid is not None
                    await runner.kill_group(step.pgid, self.options.grace)
                await rows.set_step(conn, step.id, status="failure", finished_at=runner.now())
            if job.checkout and job.worker and job.worker.startswith(f"{self.host}:"):
                # Its checkout is on this host: nothing else will remove it.
                repo = Path(run.repo) if run.repo else None
                await asyncio.to_thread(remove_checkout, Path(job.checkout), repo)
                await rows.set_job(conn, job_id, checkout=None)
            if job.attempt <= spec.retries + extra_attempts and not run.cancel_requested:
                await rows.set_job(conn, job_id, status="queued", error=f"retried: {why}")
                retry = True
            else:
                await rows.set_job(
                    conn, job_id, status="failure", finished_at=runner.now(),
                    error=why, error_code="interrupted",
                )  # fmt: skip
                retry = False
        if retry:
            await self._enqueue(job_id)
        await self.advance(job.run_id)

    # -- artifacts --------------------------------------------------------------

    async def artifact(
        self,
        name: str,
        *,
        sha: str | None = None,
        workflow: str | None = None,
        run_id: int | None = None,
    ) -> str:
        """The newest live artifact; a clear error when it is missing or expired."""
        async with self.store.connect() as conn:
            live, expired = await artifact_rows.find(
                conn, self.project, name, sha=sha, workflow=workflow, run_id=run_id
            )
        if live is not None and live.value is not None:
            return self._opened(live)
        scope = " ".join(
            f"{k} {v}" for k, v in (("workflow", workflow), ("commit", sha), ("run", run_id)) if v
        )
        if expired is not None:
            raise ArtifactMissingError(
                f"artifact {name!r} ({scope or 'any run'}) expired at {expired.expires_at:%c}"
            )
        raise ArtifactMissingError(f"no artifact {name!r} ({scope or 'any run'})")


def _days(seconds: float | None) -> timedelta | None:
    return timedelta(seconds=seconds) if seconds is not None else None


def _cancelled(by: str | None) -> str:
    return f"cancelled by {by}" if by else "the run was cancelled"


def is_sealed(value: str) -> bool:
    return value.startswith(SEALED_PREFIX)


def _password_in(value: str) -> str | None:
    """The password of a connection URI, masked on its own too (a test may print it)."""
    if "://" not in value:
        return None
    with contextlib.suppress(Exception):
        password = conninfo_to_dict(value).get("password")
        return str(password) if password else None
    return None


def _by_paths(error: str | None) -> bool:
    return bool(error and error.startswith("no changes under"))


def _step_env(
    base: Mapping[str, str], run: rows.RunRow, command: Command, secrets: Mapping[str, str]
) -> dict[str, str]:
    """What a step is given: the sandbox's base (PATH, HOME, locale), the run's facts,
    the step's own variables and the secrets it names. Nothing of branchline's own
    environment reaches code from the run's commit."""
    env = dict(base)
    env.update(
        CI="true",
        BRANCHLINE_RUN_ID=str(run.id),
        BRANCHLINE_WORKFLOW=run.workflow,
        BRANCHLINE_SHA=run.sha or "",
        BRANCHLINE_REF=run.ref or "",
    )
    env.update(command.env)
    for name in command.secrets:
        if name not in secrets:
            if run.secret_scope is None:
                continue  # a run that gets no secrets (a fork's code): its steps run without
            raise BranchlineError(
                f"secret {name!r} is not set for this run",
                hint=f"Set it with `branchline secret set {name} --env ...`.",
            )
        env[name] = secrets[name]
    return env


class _LogWriter:
    """Collects a job's masked log lines and stores them in small batches, each step's
    within its cap (see logcap)."""

    def __init__(self, store: Store, run_id: int, job_id: int, cap: int) -> None:
        self.store = store
        self.run_id = run_id
        self.job_id = job_id
        self.cap = cap
        self._step_id: int | None = None
        self._capped: StepLogCap[Line] | None = None
        self._pending: list[Line] = []
        self._conn: Any = None
        self._flusher: asyncio.Task[None] | None = None

    @property
    def step_id(self) -> int | None:
        return self._step_id

    @step_id.setter
    def step_id(self, step_id: int | None) -> None:
        self.end_step()
        self._step_id = step_id
        self._capped = StepLogCap(self.cap) if step_id is not None else None

    def end_step(self) -> None:
        """The step is over: what its cap held back (its last lines) goes out, after a
        line saying how much was dropped."""
        capped, self._capped = self._capped, None
        if capped is None:
            return
        notice = capped.notice()
        if notice is not None:
            self._pending.append(
                (self.run_id, self.job_id, self._step_id, "system", notice, runner.now())
            )
        self._pending.extend(capped.held())

    async def __aenter__(self) -> _LogWriter:
        self._cm = self.store.connect()
        self._conn = await self._cm.__aenter__()
        self._flusher = asyncio.create_task(self._flush_forever())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.end_step()
        await self.flush()
        await self._cm.__aexit__(None, None, None)

    async def write(self, stream: str, line: str) -> None:
        # Postgres text cannot hold NUL (binary output, find -print0).
        line = line.replace("\x00", "\ufffd")
        entry = (self.run_id, self.job_id, self._step_id, stream, line, runner.now())
        if self._capped is None or self._capped.admit(entry, line_size(line)):
            self._pending.append(entry)

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch and self._conn is not None:
            await rows.insert_logs(self._conn, chunked(batch))

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(runner.FLUSH_SECONDS)
            await self.flush()


class _Context:
    """The StepContext handed to actions."""

    def __init__(
        self, engine: Engine, run: rows.RunRow, secrets: Mapping[str, str], logs: _LogWriter
    ) -> None:
        self.engine = engine
        self.run_id = run.id
        self.project = run.project
        self.workflow = run.workflow
        self.triggered_by = run.triggered_by
        self.sha = run.sha
        self.ref = run.ref
        self.pr = run.pr
        self.repo = Path(run.repo) if run.repo else None
        self.secrets = secrets
        self._logs = logs

    async def log(self, line: str) -> None:
        await self._logs.write("stdout", mask(line, self.secrets.values()))

    async def jobs(self) -> list[runner.JobOutcome]:
        async with self.engine.store.connect() as conn:
            found = await rows.jobs_of(conn, self.run_id)
        return [runner.JobOutcome(j.name, j.status, j.error, j.error_code) for j in found]

    async def publish(
        self, name: str, value: str, *, sensitive: bool = False, days: float = 7
    ) -> None:
        sealer = self.engine.sealer
        if sensitive and sealer is not None:
            value = sealer.seal(value, f"artifact:{name}")  # never stored in plain text
        async with self.engine.store.connect() as conn:
            await artifact_rows.publish(
                conn, run_id=self.run_id, project=self.project, workflow=self.workflow,
                sha=self.sha, name=name, value=value, sensitive=sensitive,
                retention=timedelta(days=days),
            )  # fmt: skip

    async def artifact(
        self, name: str, *, workflow: str | None = None, sha: str | None = None
    ) -> str:
        return await self.engine.artifact(name, workflow=workflow, sha=sha)
