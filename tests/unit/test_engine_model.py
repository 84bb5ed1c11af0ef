"""Workflow definitions: validation and the plain-data round trip."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from branchline.engine.model import (
    Call,
    Command,
    Job,
    RunIf,
    Step,
    Workflow,
    topological_order,
)
from branchline.errors import UsageError

ECHO = (Step("echo", Command(("echo", "hi"))),)


def job(name: str, *needs: str, **kwargs: Any) -> Job:
    return Job(name=name, steps=ECHO, needs=needs, **kwargs)


def reference_workflow() -> Workflow:
    """The reference's testing workflow: setup, four suites in parallel, cleanup always."""
    suites = ("lint", "unit", "integration", "e2e")
    return Workflow(
        name="testing",
        concurrency_group="testing-main",
        cancel_in_progress=True,
        jobs=(
            Job(
                "setup",
                steps=(
                    Step("create branch", Call("create_branch", {"ttl": "2h", "seed": True})),
                    Step("migrate", Command(("alembic", "upgrade", "head"), cwd="db")),
                ),
            ),
            *(job(name, "setup") for name in suites),
            Job(
                "cleanup",
                steps=(Step("delete branch", Call("delete_branch"), cancellable=False),),
                needs=suites,
                run_if=RunIf.ALWAYS,
                checkout=False,
            ),
        ),
    )


# -- validation ----------------------------------------------------------------


def test_a_valid_workflow_is_accepted() -> None:
    workflow = reference_workflow()
    assert workflow.jobs[0].name == "setup"
    assert workflow.job("cleanup").run_if is RunIf.ALWAYS
    assert workflow.job("lint").needs == ("setup",)


def test_job_lookup_of_an_unknown_name_raises_key_error() -> None:
    with pytest.raises(KeyError, match="nope"):
        reference_workflow().job("nope")


def test_defaults() -> None:
    j = Job("a", steps=ECHO)
    assert j.needs == ()
    assert j.run_if is RunIf.SUCCESS
    assert j.paths == ()
    assert j.checkout is True
    assert j.retries == 0
    assert ECHO[0].cancellable is True
    command = Command(("true",))
    assert command.env == {}
    assert command.cwd is None
    assert command.timeout is None
    assert command.secrets == ()
    assert Call("x").params == {}
    w = Workflow("w", (j,))
    assert w.concurrency_group is None
    assert w.cancel_in_progress is False


def test_duplicate_job_names_are_refused_and_named() -> None:
    with pytest.raises(UsageError, match="duplicate jobs") as info:
        Workflow("ci", (job("build"), job("test"), job("build"), job("test"), job("x")))
    assert "'build'" in info.value.message
    assert "'test'" in info.value.message
    assert "'x'" not in info.value.message
    assert "'ci'" in info.value.message
    assert info.value.exit_code == 2


def test_unknown_needs_are_refused_naming_job_and_dependency() -> None:
    with pytest.raises(UsageError) as info:
        Workflow("ci", (job("build"), job("test", "build", "setpu")))
    assert "'test'" in info.value.message
    assert "'setpu'" in info.value.message
    assert "'build'" not in info.value.message.split("needs")[1]
    # The hint lists the jobs there are, so a typo is easy to spot.
    assert "build" in info.value.hint
    assert "test" in info.value.hint


def test_a_job_without_steps_is_refused() -> None:
    with pytest.raises(UsageError, match=r"job 'empty' of 'ci' has no steps"):
        Workflow("ci", (job("build"), Job("empty", steps=())))


@pytest.mark.parametrize(
    ("jobs", "cyclic"),
    [
        pytest.param([job("a", "a")], ["a"], id="self"),
        pytest.param([job("a", "b"), job("b", "a")], ["a", "b"], id="pair"),
        pytest.param(
            [job("root"), job("a", "root", "c"), job("b", "a"), job("c", "b")],
            ["a", "b", "c"],
            id="triangle-below-a-root",
        ),
    ],
)
def test_cycles_are_refused_naming_the_jobs(jobs: list[Job], cyclic: list[str]) -> None:
    with pytest.raises(UsageError, match="cycle") as info:
        Workflow("ci", tuple(jobs))
    assert str(cyclic) in info.value.message
    assert "'root'" not in info.value.message.split("of")[0]


def test_validation_also_runs_on_from_dict() -> None:
    data = reference_workflow().to_dict()
    data["jobs"][1]["needs"] = ["ghost"]
    with pytest.raises(UsageError, match="ghost"):
        Workflow.from_dict(data)


def test_topological_order_respects_needs_and_is_deterministic() -> None:
    workflow = Workflow(
        "w",
        (job("z"), job("c", "b"), job("b", "a", "z"), job("a"), job("d", "a")),
    )
    order = topological_order(workflow)
    assert order == ["a", "z", "b", "d", "c"]
    for j in workflow.jobs:
        for need in j.needs:
            assert order.index(need) < order.index(j.name)


def test_topological_order_of_the_reference_shape() -> None:
    assert topological_order(reference_workflow()) == [
        "setup",
        "e2e",
        "integration",
        "lint",
        "unit",
        "cleanup",
    ]


# -- plain data ----------------------------------------------------------------


def test_to_dict_shape() -> None:
    data = reference_workflow().to_dict()
    assert data["name"] == "testing"
    assert data["concurrency_group"] == "testing-main"
    assert data["cancel_in_progress"] is True
    setup, cleanup = data["jobs"][0], data["jobs"][-1]
    assert setup["steps"][0] == {
        "name": "create branch",
        "cancellable": True,
        "run": {"kind": "call", "action": "create_branch", "params": {"ttl": "2h", "seed": True}},
    }
    assert setup["steps"][1]["run"] == {
        "kind": "command",
        "args": ["alembic", "upgrade", "head"],
        "env": {},
        "cwd": "db",
        "timeout": None,
        "secrets": [],
        "env_from": {},
    }
    assert cleanup["run_if"] == "always"
    assert cleanup["needs"] == ["lint", "unit", "integration", "e2e"]
    assert cleanup["checkout"] is False
    assert cleanup["steps"][0]["cancellable"] is False


def test_to_dict_survives_json() -> None:
    workflow = reference_workflow()
    assert Workflow.from_dict(json.loads(json.dumps(workflow.to_dict()))) == workflow


def test_from_dict_fills_defaults_for_missing_keys() -> None:
    workflow = Workflow.from_dict(
        {
            "name": "minimal",
            "jobs": [
                {"name": "a", "steps": [{"name": "s", "run": {"kind": "command", "args": ["x"]}}]},
                {
                    "name": "b",
                    "needs": None,
                    "paths": None,
                    "steps": [{"name": "t", "run": {"kind": "call", "action": "noop"}}],
                },
            ],
        }
    )
    assert workflow == Workflow(
        "minimal", (Job("a", (Step("s", Command(("x",))),)), Job("b", (Step("t", Call("noop")),)))
    )
    assert workflow.concurrency_group is None
    assert workflow.cancel_in_progress is False


def test_from_dict_refuses_an_unknown_run_if() -> None:
    data = reference_workflow().to_dict()
    data["jobs"][0]["run_if"] = "sometimes"
    with pytest.raises(ValueError, match="sometimes"):
        Workflow.from_dict(data)


def test_from_dict_does_not_share_mutable_state_with_its_input() -> None:
    data = reference_workflow().to_dict()
    workflow = Workflow.from_dict(data)
    data["jobs"][0]["steps"][0]["run"]["params"]["ttl"] = "changed"
    data["jobs"][0]["steps"][1]["run"]["args"].append("extra")
    assert workflow == reference_workflow()


# -- round trip property -------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
commands = st.builds(
    Command,
    args=st.lists(st.text(max_size=10), min_size=1, max_size=4).map(tuple),
    env=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=3),
    cwd=st.none() | st.text(min_size=1, max_size=10),
    timeout=st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False),
    secrets=st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple),
    env_from=st.dictionaries(st.text(min_size=1, max_size=8), names, max_size=2),
)
calls = st.builds(
    Call,
    action=names,
    params=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
steps = st.builds(Step, name=names, run=commands | calls, cancellable=st.booleans())


@st.composite
def workflows(draw: st.DrawFn) -> Workflow:
    job_names = draw(st.lists(names, min_size=1, max_size=6, unique=True))
    jobs = []
    for i, name in enumerate(job_names):
        # Needs only point backwards, so the graph is acyclic by construction.
        needs = draw(st.lists(st.sampled_from(job_names[:i]), unique=True)) if i else []
        jobs.append(
            Job(
                name=name,
                steps=tuple(draw(st.lists(steps, min_size=1, max_size=3))),
                needs=tuple(needs),
                run_if=draw(st.sampled_from(RunIf)),
                paths=tuple(draw(st.lists(st.text(min_size=1, max_size=10), max_size=3))),
                checkout=draw(st.booleans()),
                retries=draw(st.integers(min_value=0, max_value=5)),
            )
        )
    return Workflow(
        name=draw(names),
        jobs=tuple(draw(st.permutations(jobs))),
        concurrency_group=draw(st.none() | names),
        cancel_in_progress=draw(st.booleans()),
    )


@given(workflows())
def test_round_trip(workflow: Workflow) -> None:
    data = workflow.to_dict()
    assert Workflow.from_dict(data) == workflow
    # Stored as jsonb: the plain data survives JSON, and so does the round trip.
    assert Workflow.from_dict(json.loads(json.dumps(data))) == workflow
    assert Workflow.from_dict(data).to_dict() == data


@given(workflows())
def test_topological_order_property(workflow: Workflow) -> None:
    order = topological_order(workflow)
    assert sorted(order) == sorted(j.name for j in workflow.jobs)
    for j in workflow.jobs:
        for need in j.needs:
            assert order.index(need) < order.index(j.name)


def test_a_call_s_deadline_is_stored_with_it() -> None:
    step = Step("migrate", Call("branch.migrate", {"name": "b"}, timeout=90.0))
    workflow = Workflow("w", (Job("j", (step,)),))
    again = Workflow.from_dict(workflow.to_dict())
    assert again.jobs[0].steps[0].run == Call("branch.migrate", {"name": "b"}, timeout=90.0)
