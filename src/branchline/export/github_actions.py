"""The reference's GitHub Actions workflows, written from a project's config: each
calls `branchline ci <pipeline>` (or `branchline rollback`), with the state in
BRANCHLINE_DATABASE_URL and every variable branchline.toml refers to taken from
GitHub's secrets (secret-looking names) or variables (the rest).

    testing.yml     push, pull_request        branchline's test jobs, side by side
    preview.yml     pull_request opened, synchronize, reopened, labeled
    production.yml  push to the production branch, never cancelled
    cleanup.yml     pull_request closed
    rollback.yml    workflow_dispatch: one service back to its previous release
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from branchline.config import Config, is_secret_name
from branchline.config.interpolation import references

HEADER = "# Written by `branchline export github-actions`"
# Pinned by full commit (tags can move), the release in a comment.
CHECKOUT = "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683  # v4.2.2"
SETUP_PYTHON = "actions/setup-python@0b93645e9fea7318ecaed2b359559ac225c90a2b  # v5.3.0"
PYTHON = "3.12"
# What every branchline step gets: the shared state and the key that seals secrets in
# it, and the token the GitHub code host acts with.
BASE_ENV = {
    "BRANCHLINE_DATABASE_URL": "${{ secrets.BRANCHLINE_DATABASE_URL }}",
    "BRANCHLINE_SECRET_KEY": "${{ secrets.BRANCHLINE_SECRET_KEY }}",
    "GITHUB_TOKEN": "${{ secrets.GITHUB_TOKEN }}",
}
APPROVAL_LABEL = "safe-to-preview"


@dataclass(frozen=True)
class Settings:
    """What the workflows depend on besides the config."""

    version: str  # the branchline release they install
    prefix: str = ""  # the project's directory inside its repository ("" at the top)
    runs_on: str = "ubuntu-latest"


def _q(text: str) -> str:
    """A YAML scalar that means exactly `text` (JSON strings are YAML)."""
    return json.dumps(text, ensure_ascii=False)


def step_env(config: Config) -> dict[str, str]:
    """BASE_ENV, then the variables branchline.toml refers to, from GitHub's secrets:
    each one without a default, and the secret-looking ones with (an unset secret is
    empty, so `${NAME:-default}` keeps its default)."""
    env = dict(BASE_ENV)
    if config.database.provider == "neon":
        env.setdefault("NEON_API_KEY", "${{ secrets.NEON_API_KEY }}")
    if config.dns.provider == "cloudflare" or config.compute.provider == "cloudflare":
        env.setdefault("CLOUDFLARE_API_TOKEN", "${{ secrets.CLOUDFLARE_API_TOKEN }}")
    for name, has_default in references(config.path.read_text(encoding="utf-8")):
        if name in env or name.startswith("GITHUB_") or (has_default and not is_secret_name(name)):
            continue
        env[name] = f"${{{{ secrets.{name} }}}}"
    return env


def loading_env(config: Config) -> dict[str, str]:
    """Only what loading branchline.toml needs: its variables without a default."""
    return {
        name: f"${{{{ secrets.{name} }}}}"
        for name, has_default in references(config.path.read_text(encoding="utf-8"))
        if not has_default and not name.startswith("GITHUB_")
    }


def watched_paths(config: Config, prefix: str) -> list[str] | None:
    """Every path a test job or a service declares, when each test job declares some;
    None when any job runs on every change (a filter would skip it)."""
    found: list[str] = ["branchline.toml"]
    for spec in config.tests.values():
        if spec.per_service:
            for service in config.services.values():
                own = [*service.paths, *spec.paths]
                if not own:
                    return None
                found += own
        elif not spec.paths:
            return None
        else:
            found += spec.paths
    if not config.tests:
        return None
    for service in config.services.values():
        found += service.paths
    return sorted({f"{prefix}{p}" for p in found})


def _lines(*blocks: Iterable[str]) -> str:
    return "\n".join(line for block in blocks for line in block).rstrip("\n") + "\n"


def _header(version: str, what: str) -> list[str]:
    return [
        f"{HEADER} (branchline {version}): {what}",
        "# Change branchline.toml and export again; `--force` overwrites edits.",
        "",
    ]


def _permissions(*granted: str) -> list[str]:
    # Least privilege: read the code, write only what the pipeline reports.
    return ["permissions:", "  contents: read", *(f"  {g}: write" for g in granted), ""]


def _concurrency(group: str, cancel: bool) -> list[str]:
    return ["concurrency:", f"  group: {_q(group)}", f"  cancel-in-progress: {str(cancel).lower()}",
            ""]  # fmt: skip


def _job(
    name: str, settings: Settings, env: dict[str, str], run: str, *, ref: str,
    condition: str | None = None, environment: str | None = None, always: bool = False,
    timeout: int = 60, extra_env: dict[str, str] | None = None, workers: bool = False,
) -> list[str]:  # fmt: skip
    lines = [f"  {name}:"]
    if condition:
        lines.append(f"    if: {condition}")
    lines += [f"    runs-on: {settings.runs_on}", f"    timeout-minutes: {timeout}"]
    if environment:
        lines.append(f"    environment: {environment}")
    if settings.prefix:
        lines += [
            "    defaults:",
            "      run:",
            f"        working-directory: {_q(settings.prefix)}",
        ]
    lines += [
        "    steps:",
        f"      - uses: {CHECKOUT}",
        "        with:",
        f"          ref: {ref}",
        "          fetch-depth: 0  # branchline diffs against the base commit",
        "          persist-credentials: false",
        f"      - uses: {SETUP_PYTHON}",
        "        with:",
        f"          python-version: {_q(PYTHON)}",
        "      - name: Install branchline",
        f"        run: python -m pip install {_q(f'branchline=={settings.version}')}",
    ]
    if workers:
        lines += WORKERS_TOOLS_STEP
    lines.append(f"      - name: branchline {name}")
    if always:
        lines.append("        if: always()")
    variables = {**env, **(extra_env or {})}
    if variables:
        lines.append("        env:")
    for key, value in variables.items():
        lines.append(f"          {key}: {value}")
    lines.append(f"        run: {run}")
    return lines


HEAD = "${{ github.event.pull_request.head.sha || github.sha }}"
# Worker services are bundled by wrangler (and tried in workerd): their tools, as
# branchline pins them, into the runner's temporary directory (unless already set).
WORKERS_TOOLS_STEP = [
    "      - name: Workers tools (wrangler, workerd, pinned by branchline)",
    "        run: |",
    '          tools="${BRANCHLINE_WORKERS_TOOLS:-$RUNNER_TEMP/branchline-workers-tools}"',
    '          branchline workers-tools install "$tools"',
    '          echo "BRANCHLINE_WORKERS_TOOLS=$tools" >> "$GITHUB_ENV"',
]


def _has_workers(config: Config) -> bool:
    return any(s.runtime == "worker" for s in config.services.values())


def testing(config: Config, settings: Settings) -> str:
    paths = watched_paths(config, settings.prefix)
    filtered = [] if paths is None else ["    paths:", *(f"      - {_q(p)}" for p in paths)]
    on = [
        "on:",
        "  push:",
        *filtered,
        "  pull_request:",
        "    types: [opened, synchronize, reopened]",
        *filtered,
        "",
    ]
    if paths is not None:
        on.insert(1, "  # Only changes to what branchline.toml declares (services, test jobs);")
        on.insert(2, "  # preview.yml and production.yml watch the same paths.")
    jobs = ", ".join(config.tests) or "none declared"
    return _lines(
        _header(settings.version, "test every push and pull request on an ephemeral branch"),
        ["name: testing", ""],
        on,
        _permissions("statuses"),
        # A newer commit of the same pull request (or branch) cancels the older run.
        _concurrency("testing-${{ github.event.pull_request.number || github.ref }}", True),
        ["jobs:",
         f"  # branchline runs the test jobs ({jobs}) side by side, each only when its paths",
         "  # changed; the ephemeral branch is deleted even when one fails."],
        _job("testing", settings, step_env(config), "branchline ci testing", ref=HEAD),
        ["", "  # Beside it: these workflows still match branchline.toml (no secrets needed)."],
        _job("workflows", settings, loading_env(config),
             "branchline export github-actions --check", ref=HEAD, timeout=10),
    )  # fmt: skip


def preview(config: Config, settings: Settings) -> str:
    paths = watched_paths(config, settings.prefix)
    filtered = [] if paths is None else ["    paths:", *(f"      - {_q(p)}" for p in paths)]
    labeled = f"github.event.action != 'labeled' || github.event.label.name == '{APPROVAL_LABEL}'"
    return _lines(
        _header(settings.version, "a live preview environment per pull request"),
        ["name: preview", "", "on:", "  pull_request:",
         "    types: [opened, synchronize, reopened, labeled]", *filtered, ""],
        _permissions("statuses", "pull-requests", "issues", "deployments"),
        _concurrency("preview-${{ github.event.pull_request.number }}", True),
        ["jobs:",
         "  # Waits for this commit's testing run (testing.yml) to pass; a fork's pull",
         f"  # request is previewed once a writer labels it {APPROVAL_LABEL}."],
        _job("preview", settings, step_env(config),
             "branchline ci preview --wait-for-testing 30m", ref=HEAD, condition=_q(labeled),
             environment="preview", workers=_has_workers(config)),
    )  # fmt: skip


def production(config: Config, settings: Settings) -> str:
    branch = config.project.production_branch
    paths = watched_paths(config, settings.prefix)
    filtered = [] if paths is None else ["    paths:", *(f"      - {_q(p)}" for p in paths)]
    return _lines(
        _header(settings.version, f"roll {branch} out to production"),
        ["name: production", "", "on:", "  push:", f"    branches: [{_q(branch)}]", *filtered,
         ""],
        _permissions("statuses", "issues", "deployments"),
        # One rollout at a time, and never one cancelled halfway.
        _concurrency("production", False),
        ["jobs:",
         "  # After this commit's testing run passed: build every service, migrate, deploy",
         "  # in order with health checks; a failed check rolls back and opens an issue."],
        _job("production", settings, step_env(config),
             "branchline ci production --wait-for-testing 30m", ref="${{ github.sha }}",
             environment="production", timeout=120, workers=_has_workers(config)),
    )  # fmt: skip


def cleanup(config: Config, settings: Settings) -> str:
    return _lines(
        _header(settings.version, "remove a closed pull request's preview"),
        ["name: cleanup", "", "on:", "  pull_request:", "    types: [closed]", ""],
        _permissions("statuses", "pull-requests", "issues", "deployments"),
        # Same group as preview.yml: closing stops a preview still being made.
        _concurrency("preview-${{ github.event.pull_request.number }}", True),
        ["jobs:"],
        _job("cleanup", settings, step_env(config), "branchline ci cleanup",
             ref="${{ github.event.pull_request.base.sha }}", always=True),
    )  # fmt: skip


def rollback(config: Config, settings: Settings) -> str:
    services = [s.name for s in config.services_in_deploy_order()]
    options = ", ".join(_q(s) for s in services) or _q("none")
    # Inputs reach the command through the environment, never pasted into the script.
    run = 'branchline rollback "$SERVICE" --env production ${TO_RELEASE:+--to "$TO_RELEASE"}'
    return _lines(
        _header(settings.version, "roll one production service back (by hand)"),
        ["name: rollback", "", "on:", "  workflow_dispatch:", "    inputs:",
         "      service:", "        description: The service to roll back",
         "        required: true",
         "        type: choice", f"        options: [{options}]",
         "      to:", "        description: A release (default the previous one)",
         "        required: false", "        type: string", ""],
        _permissions("issues", "deployments"),
        _concurrency("production", False),
        ["jobs:"],
        _job("rollback", settings, step_env(config), _q(run), ref="${{ github.sha }}",
             environment="production", timeout=30, workers=_has_workers(config),
             extra_env={"SERVICE": "${{ inputs.service }}", "TO_RELEASE": "${{ inputs.to }}"}),
    )  # fmt: skip


WORKFLOWS = {
    "testing.yml": testing,
    "preview.yml": preview,
    "production.yml": production,
    "cleanup.yml": cleanup,
    "rollback.yml": rollback,
}


def render(config: Config, settings: Settings) -> dict[str, str]:
    """Each workflow file's name and text."""
    return {name: write(config, settings) for name, write in WORKFLOWS.items()}
