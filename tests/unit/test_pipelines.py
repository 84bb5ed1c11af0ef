"""The pipelines' workflows as data: what runs, in what order, on which branch."""

from __future__ import annotations

from pathlib import Path

import pytest

from branchline import naming
from branchline.config import Config, load_config
from branchline.engine.model import Call, Command, RunIf
from branchline.errors import UsageError
from branchline.pipelines import cleanup, preview, testing

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "codex" / "branchline.toml"
SHA = "1a2b3c4d5e6f" + "0" * 28


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(EXAMPLE, env={})


def test_testing_for_a_pull_request(config: Config) -> None:
    flow = testing.workflow(config, sha=SHA, pr=8)
    assert [job.name for job in flow.jobs] == [
        "database", "lint", "unit-api", "unit-auth", "unit-web", "integration", "e2e",
        "cleanup", "report",
    ]  # fmt: skip
    assert flow.concurrency_group == "testing-pr-8" and flow.cancel_in_progress
    database = flow.job("database")
    create = database.steps[1].run
    assert isinstance(create, Call) and create.params["name"] == "pr-8-1a2b3c4d"
    integration = flow.job("integration")
    assert integration.needs == ("database",)
    command = integration.steps[-1].run
    assert isinstance(command, Command)
    assert command.env_from == {"DATABASE_URL": "database_url"}
    assert command.secrets == ("AUTH_SECRET",)
    # E2E on a branch of its own, beside (not after) the shared one.
    e2e = flow.job("e2e")
    assert e2e.needs == () and e2e.paths == ("services/web/**",)
    own = e2e.steps[0].run
    assert isinstance(own, Call) and own.params["name"] == "pr-8-e2e"
    assert e2e.steps[-1].run.env_from == {"DATABASE_URL": "e2e:database_url"}  # type: ignore[union-attr]
    assert flow.job("lint").needs == () and flow.job("lint").paths == ()
    # Cleanup always runs and deletes both branches; the report comes last.
    clean = flow.job("cleanup")
    assert clean.run_if is RunIf.ALWAYS
    assert clean.steps[0].run == Call("branch.delete", {"names": ["pr-8-1a2b3c4d", "pr-8-e2e"]})
    report = flow.job("report")
    assert report.run_if is RunIf.ALWAYS and "cleanup" in report.needs


def test_testing_for_a_push_and_a_project_below_the_repository_root(config: Config) -> None:
    flow = testing.workflow(config, sha=SHA, branch="feature/Ünïcode $(x)", prefix="app/")
    create = flow.job("database").steps[1].run
    assert isinstance(create, Call)
    name = create.params["name"]
    assert naming.validate_branch_id(name) == name and name.startswith("push-feature")
    assert flow.concurrency_group is not None and "$" not in flow.concurrency_group
    unit = flow.job("unit-auth")
    assert unit.paths == ("app/services/auth/**", "app/tests/unit/**", "app/tests/conftest.py")
    assert isinstance(unit.steps[-1].run, Command) and unit.steps[-1].run.cwd == "app"


def test_a_long_push_branch_still_gives_valid_names(config: Config) -> None:
    flow = testing.workflow(config, sha=SHA, branch="x" * 300)
    names = flow.job("cleanup").steps[0].run.params["names"]  # type: ignore[union-attr]
    assert all(len(n) <= 63 and naming.validate_branch_id(n) == n for n in names)
    assert names[1].endswith("-e2e") and names[0] != names[1]


def test_testing_survives_a_round_trip_through_the_store(config: Config) -> None:
    flow = testing.workflow(config, sha=SHA, pr=8)
    assert type(flow).from_dict(flow.to_dict()) == flow


def test_preview_and_cleanup_share_one_group_per_pull_request() -> None:
    made, removed = preview.workflow(8), cleanup.workflow(8)
    assert made.concurrency_group == removed.concurrency_group == "preview-8"
    assert made.cancel_in_progress and removed.cancel_in_progress
    steps = [step.name for step in made.job("preview").steps]
    assert steps[:2] == ["require tests", "still open"] and steps[-1] == "finish"
    assert steps.index("prepare") < steps.index("deploy")
    assert made.job("report failure").run_if is RunIf.FAILURE


def test_pull_request_numbers_are_checked() -> None:
    with pytest.raises(UsageError):
        preview.workflow(0)
    with pytest.raises(UsageError):
        naming.branch_for_pr_commit(8, "not-a-sha")


def test_the_preview_comment() -> None:
    body = preview.comment_body(
        pr=8, sha=SHA, branch="pr-8",
        services=[("api", "api-preview-8", "http://api-preview-8.codex.localhost:8080/",
                   "api@1a2b3c4d5e6f.1")],
        tests={"unit": "success", "e2e": "skipped"},
        diff="--- production\n+++ pr-8\n" + "+x\n" * 300,
    )  # fmt: skip
    assert "| api | http://api-preview-8.codex.localhost:8080/ | `api-preview-8` |" in body
    assert "database branch `pr-8`" in body and "Commit `1a2b3c4d5e6f`" in body
    assert "Tests: e2e skipped, unit success" in body
    assert "302 lines, first 120 shown" in body and body.count("+x") == 118
    same = preview.comment_body(pr=8, sha=SHA, branch="pr-8", services=[], tests={}, diff="")
    assert "Schema: the same as production." in same


def test_naming_of_test_branches() -> None:
    assert naming.branch_for_pr_commit(8, SHA) == "pr-8-1a2b3c4d"
    assert naming.e2e_branch_for("pr-8") == "pr-8-e2e"
    long = "push-" + "a" * 58
    assert naming.e2e_branch_for(long) == "push-" + "a" * 54 + "-e2e"


def test_per_service_jobs_run_only_for_the_services_that_changed(tmp_path: Path) -> None:
    for service in ("api", "web"):
        (tmp_path / "services" / service).mkdir(parents=True)
    (tmp_path / "branchline.toml").write_text(
        """
[project]
name = "shop"
zone = "shop.localhost"
[database]
migrate = "true"
[services.api]
path = "services/api"
run = "python app.py"
[services.web]
path = "services/web"
run = "python app.py"
paths = ["services/web/**", "templates/**"]
[tests.unit]
command = ["pytest", "tests/unit/test_{service}.py", "{service_path}"]
paths = ["tests/unit/conftest.py"]
per_service = true
"""
    )
    config = load_config(tmp_path / "branchline.toml", env={})
    flow = testing.workflow(config, sha=SHA, pr=3)
    api, web = flow.job("unit-api"), flow.job("unit-web")
    assert api.paths == ("services/api/**", "tests/unit/conftest.py")
    assert web.paths == ("services/web/**", "templates/**", "tests/unit/conftest.py")
    command = web.steps[-1].run
    assert isinstance(command, Command)
    assert command.args == ("pytest", "tests/unit/test_web.py", "services/web")
    assert command.env == {"BRANCHLINE_SERVICE": "web"}
    assert set(flow.job("report").needs) >= {"unit-api", "unit-web"}
