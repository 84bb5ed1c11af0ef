"""The preview's data and hooks on in-memory providers: the branch made as `[preview]
data` says, a branch made otherwise kept (and said so), the seed once, and
predestroy before anything is removed, never blocking the removal."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from branchline.branchdata import DataPlan
from branchline.config import Config, PreviewConfig, load_config
from branchline.errors import BranchlineError
from branchline.kit import Kit
from branchline.pipelines import cleanup, preview
from tests.fakes import FakeStepContext, memory_kit
from tests.fakes.kit import EXAMPLE_CONFIG

T = TypeVar("T")
SHA = "a" * 40


def run(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(work)


def configured(**preview_keys: Any) -> Config:
    config = load_config(EXAMPLE_CONFIG, env={})
    return config.model_copy(update={"preview": PreviewConfig(**preview_keys)})


def live_preview(kit: Kit) -> FakeStepContext:
    kit.forge.open(7, SHA)  # type: ignore[attr-defined]
    ctx = FakeStepContext(pr=7, sha=SHA, repo=Path("/nonexistent"))
    for step in (preview.reserve, preview.ensure_secrets, preview.ensure_branch,
                 preview.ensure_dns, preview.deploy):  # fmt: skip
        run(step(kit, ctx))
    return ctx


def test_the_preview_branch_holds_what_preview_data_says() -> None:
    kit = memory_kit(configured(data="schema"))
    kit.database.write("production", "users", ["alice@corp.example"])  # type: ignore[attr-defined]
    ctx = live_preview(kit)
    assert kit.database.read("pr-7") == {}  # type: ignore[attr-defined]
    assert "pr-7 holds production's schema, no rows" in ctx.lines
    # Made otherwise before (the config changed since): kept, and the log says how to remake it.
    changed = memory_kit(configured(data="copy"))
    changed.database = kit.database
    again = FakeStepContext(pr=7, sha=SHA)
    run(preview.ensure_branch(changed, again))
    assert any("close and reopen the pull request to remake it" in line for line in again.lines)
    branch = run(kit.database.get_branch("pr-7"))
    assert branch is not None and DataPlan.from_dict(branch.detail["data"]) == DataPlan("schema")


def test_the_seed_runs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    kit = memory_kit(configured(seed=("python", "seed.py")))
    ctx = live_preview(kit)
    seeded: list[str] = []

    async def fake_hook(kit: Kit, log: Any, **params: Any) -> int:
        seeded.append(params["branch"])
        return 0

    monkeypatch.setattr("branchline.pipelines.actions.run_hook", fake_hook)
    run(preview.seed_once(kit, ctx, "pr-7"))
    # The seed marks the branch; the memory database keeps marks in its detail.
    branch = run(kit.database.get_branch("pr-7"))
    assert branch is not None and "seeded_at" in branch.detail
    run(preview.seed_once(kit, ctx, "pr-7"))
    assert seeded == ["pr-7"]
    assert any("was seeded at" in line for line in ctx.lines)


@pytest.mark.parametrize("outcome", [0, 3, BranchlineError("cannot check out 1234")])
def test_predestroy_runs_first_and_never_blocks_the_teardown(
    monkeypatch: pytest.MonkeyPatch, outcome: int | BranchlineError
) -> None:
    kit = memory_kit(configured(predestroy=("python", "export.py")))
    live_preview(kit)
    seen: list[tuple[str, bool, int]] = []

    async def fake_hook(kit: Kit, log: Any, **params: Any) -> int:
        # What is still there when it runs: the branch and the live service.
        live = [d for d in await kit.compute.list_deployments() if d.status == "live"]
        branch = await kit.database.get_branch(params["branch"])
        seen.append((params["sha"], branch is not None, len(live)))
        assert params["command"] == ("python", "export.py") and params["what"] == "predestroy"
        if isinstance(outcome, BranchlineError):
            raise outcome
        return outcome

    monkeypatch.setattr(cleanup, "run_hook", fake_hook)
    ctx = FakeStepContext(pr=7, sha=SHA, workflow=cleanup.NAME)
    removed = run(cleanup.teardown(kit, 7, ctx))
    assert seen == [(SHA, True, 3)]
    assert removed["branches"] == ["pr-7"] and len(removed["services"]) == 3
    if outcome == 3:
        assert "predestroy failed (exit code 3); removing preview-7 anyway" in ctx.lines
    if isinstance(outcome, BranchlineError):
        assert any(
            line.startswith("predestroy could not run: cannot check out") for line in ctx.lines
        )
    # Twice: the branch is gone, so the hook is not run again.
    run(cleanup.teardown(kit, 7, ctx))
    assert len(seen) == 1
    assert "predestroy: skipped, preview-7 has no database branch left" in ctx.lines
