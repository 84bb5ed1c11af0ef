"""Which jobs become ready or skipped, and how a run ends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from branchline.engine.decide import FINISHED, Decision, JobState, decide
from branchline.engine.model import Command, Job, RunIf, Step, Workflow

ECHO = (Step("echo", Command(("echo", "hi"))),)
SUITES = ("lint", "unit", "integration", "e2e")
PATHS_SKIP = "no changes under"  # the engine recognises path skips by this prefix


def job(name: str, *needs: str, run_if: RunIf = RunIf.SUCCESS, paths: tuple[str, ...] = ()) -> Job:
    return Job(name=name, steps=ECHO, needs=needs, run_if=run_if, paths=paths)


def reference(*extra: Job, e2e_paths: tuple[str, ...] = ()) -> Workflow:
    """The reference's testing workflow: setup -> four suites in parallel -> cleanup (always)."""
    return Workflow(
        "testing",
        (
            job("setup"),
            job("lint", "setup"),
            job("unit", "setup"),
            job("integration", "setup"),
            job("e2e", "setup", paths=e2e_paths),
            job("cleanup", *SUITES, run_if=RunIf.ALWAYS),
            *extra,
        ),
    )


def states(workflow: Workflow, **given: str | JobState) -> dict[str, JobState]:
    """Every job pending unless given (a status, or a JobState)."""
    out = {j.name: JobState("pending") for j in workflow.jobs}
    for name, state in given.items():
        out[name] = state if isinstance(state, JobState) else JobState(state)
    return out


def apply(current: Mapping[str, JobState], decision: Decision) -> dict[str, JobState]:
    """What the engine records for a decision."""
    new = dict(current)
    for name in decision.enqueue:
        new[name] = JobState("queued")
    for name, reason in decision.skip.items():
        new[name] = JobState("skipped", skipped_by_paths=reason.startswith(PATHS_SKIP))
    return new


@dataclass
class Simulation:
    """Runs a workflow to its end with decide, each job ending as `outcomes` says."""

    workflow: Workflow
    outcomes: Mapping[str, str] = field(default_factory=dict)  # default success
    changed: list[str] | None = None
    cancel_after: int | None = None  # cancel once this many jobs have finished
    enqueued: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    enqueued_after_cancel: list[str] = field(default_factory=list)
    run_status: str | None = None
    cancelled: bool = False

    def run(self) -> dict[str, JobState]:
        current = states(self.workflow)
        cancelled = False
        for _ in range(10 * len(self.workflow.jobs) + 10):
            finished = sum(current[n].status in FINISHED for n in self.enqueued)
            if self.cancel_after is not None and finished >= self.cancel_after:
                cancelled = self.cancelled = True
            decision = decide(self.workflow, current, cancelled=cancelled, changed=self.changed)
            assert not set(decision.enqueue) & set(self.enqueued), "enqueued twice"
            assert not set(decision.skip) & set(decision.enqueue)
            self.enqueued += decision.enqueue
            if cancelled:
                self.enqueued_after_cancel += decision.enqueue
            self.skipped.update(decision.skip)
            current = apply(current, decision)
            if decision.run_status is not None:
                self.run_status = decision.run_status
                return current
            queued = [n for n in current if current[n].status == "queued"]
            assert queued, f"stuck: {current}"
            # Finish the first queued job (in workflow order); the others keep running.
            name = queued[0]
            current[name] = JobState(self.outcomes.get(name, "success"))
        raise AssertionError("the run never ended")


# -- the reference workflow ---------------------------------------------------------


def test_only_setup_is_ready_at_first() -> None:
    workflow = reference()
    decision = decide(workflow, states(workflow), cancelled=False, changed=None)
    assert decision.enqueue == ["setup"]
    assert decision.skip == {}
    assert decision.run_status is None


def test_the_suites_start_in_parallel_after_setup() -> None:
    workflow = reference()
    decision = decide(workflow, states(workflow, setup="success"), cancelled=False, changed=None)
    assert decision.enqueue == list(SUITES)
    assert decision.skip == {}
    assert decision.run_status is None


@pytest.mark.parametrize("status", ["queued", "running"])
def test_nothing_is_ready_while_setup_is_not_finished(status: str) -> None:
    workflow = reference()
    decision = decide(workflow, states(workflow, setup=status), cancelled=False, changed=None)
    assert decision == Decision()


def test_cleanup_waits_for_every_suite() -> None:
    workflow = reference()
    current = states(
        workflow, setup="success", lint="success", unit="failure", integration="success"
    )
    current["e2e"] = JobState("running")
    assert decide(workflow, current, cancelled=False, changed=None) == Decision()


def test_all_green() -> None:
    sim = Simulation(reference())
    final = sim.run()
    assert sim.enqueued == ["setup", *SUITES, "cleanup"]
    assert sim.skipped == {}
    assert sim.run_status == "success"
    assert all(state.status == "success" for state in final.values())


def test_a_failed_suite_still_runs_cleanup_and_fails_the_run() -> None:
    sim = Simulation(reference(job("report", "lint")), outcomes={"lint": "failure"})
    final = sim.run()
    assert sim.skipped == {"report": "a dependency did not succeed"}
    assert "cleanup" in sim.enqueued
    assert final["cleanup"].status == "success"
    assert sim.run_status == "failure"


def test_a_failed_setup_skips_every_suite_but_not_cleanup() -> None:
    workflow = reference()
    decision = decide(workflow, states(workflow, setup="failure"), cancelled=False, changed=None)
    # Skips cascade within one decision, so cleanup is ready at once.
    assert decision.skip == dict.fromkeys(SUITES, "a dependency did not succeed")
    assert decision.enqueue == ["cleanup"]
    assert decision.run_status is None
    after = apply(states(workflow, setup="failure"), decision)
    after["cleanup"] = JobState("success")
    assert decide(workflow, after, cancelled=False, changed=None).run_status == "failure"


def test_a_failing_cleanup_fails_an_otherwise_green_run() -> None:
    sim = Simulation(reference(), outcomes={"cleanup": "failure"})
    sim.run()
    assert sim.run_status == "failure"


# -- cancellation ------------------------------------------------------------------


def test_cancel_before_anything_ran() -> None:
    workflow = reference()
    decision = decide(workflow, states(workflow), cancelled=True, changed=None)
    assert decision.skip == dict.fromkeys(["setup", *SUITES], "the run was cancelled")
    assert decision.enqueue == ["cleanup"]
    assert decision.run_status is None


def test_cancel_while_setup_runs_waits_for_it() -> None:
    workflow = reference()
    running = states(workflow, setup="running")
    assert decide(workflow, running, cancelled=True, changed=None) == Decision()
    # Setup ends cancelled: the suites are skipped, cleanup still runs.
    current = states(workflow, setup="cancelled")
    decision = decide(workflow, current, cancelled=True, changed=None)
    assert decision.skip == dict.fromkeys(SUITES, "the run was cancelled")
    assert decision.enqueue == ["cleanup"]
    current = apply(current, decision)
    current["cleanup"] = JobState("success")
    final = decide(workflow, current, cancelled=True, changed=None)
    assert final == Decision(run_status="cancelled")


def test_cancel_after_the_suites_started() -> None:
    workflow = reference()
    current = states(
        workflow, setup="success", lint="success", unit="cancelled", integration="cancelled"
    )
    current["e2e"] = JobState("running")
    assert decide(workflow, current, cancelled=True, changed=None) == Decision()
    current["e2e"] = JobState("cancelled")
    decision = decide(workflow, current, cancelled=True, changed=None)
    assert decision.enqueue == ["cleanup"]
    current["cleanup"] = JobState("success")
    assert decide(workflow, current, cancelled=True, changed=None).run_status == "cancelled"


def test_a_cancelled_run_ends_cancelled_even_if_every_job_succeeded() -> None:
    workflow = reference()
    done = states(workflow, **dict.fromkeys([j.name for j in workflow.jobs], "success"))
    assert decide(workflow, done, cancelled=True, changed=None).run_status == "cancelled"
    assert decide(workflow, done, cancelled=False, changed=None).run_status == "success"


def test_cancellation_skips_failure_handlers_too() -> None:
    workflow = reference(job("on-failure", *SUITES, run_if=RunIf.FAILURE))
    current = states(workflow, setup="success", **dict.fromkeys(SUITES, "cancelled"))
    decision = decide(workflow, current, cancelled=True, changed=None)
    assert decision.skip == {"on-failure": "the run was cancelled"}
    assert decision.enqueue == ["cleanup"]


def test_simulated_cancel_enqueues_only_always_jobs_afterwards() -> None:
    workflow = reference(job("deploy", "cleanup"), job("notify", "deploy", run_if=RunIf.ALWAYS))
    # Cancelled while the suites run (after setup and one suite finished).
    sim = Simulation(workflow, cancel_after=2, outcomes=dict.fromkeys(SUITES[1:], "cancelled"))
    final = sim.run()
    assert sim.enqueued_after_cancel == ["cleanup", "notify"]
    assert sim.skipped == {"deploy": "the run was cancelled"}
    assert final["notify"].status == "success"
    assert sim.run_status == "cancelled"


# -- run_if failure ----------------------------------------------------------------


def test_a_failure_handler_runs_when_a_dependency_failed() -> None:
    workflow = reference(job("report", *SUITES, run_if=RunIf.FAILURE))
    current = states(
        workflow,
        setup="success",
        lint="success",
        unit="failure",
        integration="success",
        e2e=JobState("skipped", skipped_by_paths=True),
    )
    decision = decide(workflow, current, cancelled=False, changed=None)
    assert decision.enqueue == ["cleanup", "report"]


def test_a_cancelled_dependency_counts_as_failed_for_a_failure_handler() -> None:
    workflow = Workflow("w", (job("a"), job("b", "a", run_if=RunIf.FAILURE)))
    decision = decide(workflow, states(workflow, a="cancelled"), cancelled=False, changed=None)
    assert decision.enqueue == ["b"]


def test_a_failure_handler_is_skipped_when_nothing_failed() -> None:
    workflow = reference(job("report", *SUITES, run_if=RunIf.FAILURE))
    sim = Simulation(workflow)
    sim.run()
    assert sim.skipped == {"report": "no dependency failed"}
    assert sim.run_status == "success"


def test_a_failure_handler_without_needs_never_runs() -> None:
    workflow = Workflow("w", (job("a"), job("b", run_if=RunIf.FAILURE)))
    decision = decide(workflow, states(workflow), cancelled=False, changed=None)
    assert decision.enqueue == ["a"]
    assert decision.skip == {"b": "no dependency failed"}


def test_a_failure_handler_waits_for_all_its_dependencies() -> None:
    workflow = Workflow("w", (job("a"), job("b"), job("c", "a", "b", run_if=RunIf.FAILURE)))
    current = states(workflow, a="failure", b="running")
    assert decide(workflow, current, cancelled=False, changed=None) == Decision()


def test_a_handled_failure_still_fails_the_run() -> None:
    workflow = Workflow("w", (job("a"), job("fix", "a", run_if=RunIf.FAILURE)))
    sim = Simulation(workflow, outcomes={"a": "failure"})
    sim.run()
    assert sim.enqueued == ["a", "fix"]
    assert sim.run_status == "failure"


# -- path filters --------------------------------------------------------------------


def test_a_path_filtered_job_without_matching_changes_is_skipped() -> None:
    workflow = reference(e2e_paths=("frontend/**", "e2e/**"))
    current = states(workflow, setup="success")
    decision = decide(workflow, current, cancelled=False, changed=["src/api/app.py"])
    assert decision.enqueue == ["lint", "unit", "integration"]
    assert decision.skip == {"e2e": "no changes under frontend/**, e2e/**"}
    assert decision.skip["e2e"].startswith(PATHS_SKIP)


def test_a_path_filtered_job_with_matching_changes_runs() -> None:
    workflow = reference(e2e_paths=("frontend/**",))
    current = states(workflow, setup="success")
    decision = decide(
        workflow, current, cancelled=False, changed=["README.md", "frontend/src/App.tsx"]
    )
    assert decision.enqueue == list(SUITES)


def test_a_path_skip_does_not_block_dependants() -> None:
    workflow = reference(
        job("screenshots", "e2e"), job("publish", "screenshots"), e2e_paths=("frontend/**",)
    )
    sim = Simulation(workflow, changed=["src/api/app.py"])
    final = sim.run()
    assert sim.skipped == {"e2e": "no changes under frontend/**"}
    assert final["e2e"] == JobState("skipped", skipped_by_paths=True)
    assert sorted(sim.enqueued) == sorted(
        ["setup", "lint", "unit", "integration", "cleanup", "screenshots", "publish"]
    )
    assert final["publish"].status == "success"
    assert sim.run_status == "success"


def test_a_dependency_failure_skip_does_cascade() -> None:
    workflow = Workflow("w", (job("a"), job("b", "a"), job("c", "b"), job("d", "c")))
    decision = decide(workflow, states(workflow, a="failure"), cancelled=False, changed=None)
    assert decision.skip == dict.fromkeys("bcd", "a dependency did not succeed")
    assert decision.run_status == "failure"


def test_a_plain_skip_blocks_but_a_path_skip_does_not() -> None:
    workflow = Workflow("w", (job("a"), job("b", "a")))
    plain = decide(workflow, states(workflow, a="skipped"), cancelled=False, changed=None)
    assert plain.skip == {"b": "a dependency did not succeed"}
    by_paths = states(workflow, a=JobState("skipped", skipped_by_paths=True))
    assert decide(workflow, by_paths, cancelled=False, changed=None).enqueue == ["b"]


def test_no_changes_at_all_skips_every_filtered_job() -> None:
    workflow = reference(e2e_paths=("**",))
    decision = decide(workflow, states(workflow, setup="success"), cancelled=False, changed=[])
    assert decision.skip == {"e2e": "no changes under **"}


def test_unknown_changes_run_everything() -> None:
    workflow = reference(job("docs", paths=("docs/**",)), e2e_paths=("frontend/**",))
    sim = Simulation(workflow, changed=None)
    sim.run()
    assert sim.skipped == {}
    assert sorted(sim.enqueued) == sorted(j.name for j in workflow.jobs)
    assert sim.run_status == "success"


def test_changed_may_be_a_one_shot_iterator() -> None:
    workflow = Workflow(
        "w",
        (job("a", paths=("a/**",)), job("b", paths=("b/**",)), job("c", paths=("c/**",))),
    )
    decision = decide(workflow, states(workflow), cancelled=False, changed=iter(["b/x", "c/y"]))
    assert decision.enqueue == ["b", "c"]
    assert list(decision.skip) == ["a"]


def test_an_always_job_is_path_filtered_too() -> None:
    workflow = Workflow("w", (job("a"), job("tidy", "a", run_if=RunIf.ALWAYS, paths=("x/**",))))
    decision = decide(workflow, states(workflow, a="failure"), cancelled=False, changed=["y"])
    assert decision.skip == {"tidy": "no changes under x/**"}
    assert decision.run_status == "failure"


def test_a_cancelled_run_skips_for_cancellation_not_for_paths() -> None:
    workflow = Workflow("w", (job("a", paths=("x/**",)),))
    decision = decide(workflow, states(workflow), cancelled=True, changed=["y"])
    assert decision.skip == {"a": "the run was cancelled"}
    assert decision.run_status == "cancelled"


# -- run status ------------------------------------------------------------------------


@pytest.mark.parametrize("unfinished", ["pending", "queued", "running"])
def test_no_run_status_while_any_job_is_unfinished(unfinished: str) -> None:
    workflow = Workflow("w", (job("a"), job("b")))
    # (A pending b is enqueued by this very decision: still no status.)
    decision = decide(
        workflow, states(workflow, a="success", b=unfinished), cancelled=False, changed=None
    )
    assert decision.run_status is None


@pytest.mark.parametrize(
    ("statuses", "cancelled", "expected"),
    [
        (["success", "success"], False, "success"),
        (["success", "skipped"], False, "success"),
        (["skipped", "skipped"], False, "success"),
        (["success", "failure"], False, "failure"),
        (["success", "cancelled"], False, "failure"),  # a job cancelled on its own (timeout)
        (["failure", "cancelled"], True, "cancelled"),
        (["success", "success"], True, "cancelled"),
    ],
)
def test_run_status(statuses: list[str], cancelled: bool, expected: str) -> None:
    workflow = Workflow("w", (job("a"), job("b")))
    current = states(workflow, a=statuses[0], b=statuses[1])
    decision = decide(workflow, current, cancelled=cancelled, changed=None)
    assert decision == Decision(run_status=expected)


def test_decide_does_not_change_its_input() -> None:
    workflow = reference()
    current = states(workflow, setup="failure")
    before = dict(current)
    decide(workflow, current, cancelled=False, changed=None)
    assert current == before


def test_finished_statuses() -> None:
    assert {"success", "failure", "cancelled", "skipped"} == FINISHED
    assert "queued" not in FINISHED
    assert "running" not in FINISHED


# -- properties --------------------------------------------------------------------------


@st.composite
def runs(draw: st.DrawFn) -> Simulation:
    n = draw(st.integers(1, 7))
    names = [f"j{i}" for i in range(n)]
    jobs = []
    for i, name in enumerate(names):
        needs = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        paths = draw(st.sampled_from([(), ("src/**",), ("docs/**",)]))
        jobs.append(job(name, *needs, run_if=draw(st.sampled_from(RunIf)), paths=paths))
    workflow = Workflow("w", tuple(jobs))
    outcomes = draw(
        st.fixed_dictionaries(
            {
                name: st.sampled_from(["success", "success", "failure", "cancelled"])
                for name in names
            }
        )
    )
    changed = draw(st.none() | st.lists(st.sampled_from(["src/a.py", "docs/b.md", "c"])))
    cancel_after = draw(st.none() | st.integers(0, n))
    return Simulation(workflow, outcomes, changed, cancel_after)


@given(runs())
@settings(max_examples=300)
def test_every_run_ends_and_obeys_the_rules(sim: Simulation) -> None:
    final = sim.run()
    workflow = sim.workflow
    assert all(state.status in FINISHED for state in final.values())
    assert set(sim.enqueued) | set(sim.skipped) == {j.name for j in workflow.jobs}
    for j in workflow.jobs:
        needs = [final[n] for n in j.needs]
        if j.name in sim.enqueued:
            if j.run_if is RunIf.SUCCESS:
                assert all(
                    s.status == "success" or (s.status == "skipped" and s.skipped_by_paths)
                    for s in needs
                )
            if j.run_if is RunIf.FAILURE:
                assert any(s.status in ("failure", "cancelled") for s in needs)
        elif not sim.skipped[j.name].startswith(PATHS_SKIP) and j.run_if is RunIf.ALWAYS:
            raise AssertionError(f"always job {j.name} skipped: {sim.skipped[j.name]}")
    # After a cancel, only always-jobs start.
    for name in sim.enqueued_after_cancel:
        assert workflow.job(name).run_if is RunIf.ALWAYS
    statuses = {s.status for s in final.values()}
    if sim.cancelled:
        assert sim.run_status == "cancelled"
    elif statuses & {"failure", "cancelled"}:
        assert sim.run_status == "failure"
    else:
        assert sim.run_status == "success"


@given(runs())
@settings(max_examples=100)
def test_unknown_changes_never_skip_for_paths(sim: Simulation) -> None:
    sim.changed = None
    sim.run()
    assert not any(reason.startswith(PATHS_SKIP) for reason in sim.skipped.values())
