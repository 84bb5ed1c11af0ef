"""The Workers tools (wrangler, workerd, their Node.js) found in the project, or an
error saying how to install them; the tests that need them fail under CI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from branchline.providers.compute import workertools
from tests import workers_tools


def test_missing_tools_say_how_to_install_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(workertools.WorkersToolsMissingError) as missing:
        workertools.find({workertools.VARIABLE: str(tmp_path)})
    assert "node, wrangler, workerd missing" in missing.value.message
    assert f"(cd {tmp_path} && npm ci)" in missing.value.hint
    monkeypatch.setattr(workertools, "CHECKOUT_TOOLS", tmp_path / "nowhere")
    with pytest.raises(workertools.WorkersToolsMissingError) as missing:
        workertools.find({})
    assert "run `(cd tools/workers && npm ci)`" in missing.value.hint


def test_missing_tools_fail_the_tests_under_ci_and_skip_them_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(workertools.VARIABLE, str(tmp_path))
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="npm ci"):
        workers_tools.required()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="Workers tools are not installed"):
        workers_tools.required()


def test_the_pins_are_exact() -> None:
    package = json.loads((workertools.CHECKOUT_TOOLS / "package.json").read_text())
    assert package["dependencies"] == {"workerd": "1.20261123.1", "wrangler": "4.164.0"}
    lock = json.loads((workertools.CHECKOUT_TOOLS / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/wrangler"]["version"] == "4.164.0"
    assert lock["packages"]["node_modules/workerd"]["version"] == "1.20261123.1"


FAKE_NPM = """#!/bin/sh
# `npm ci` as far as the tools' layout goes: the files find() looks for.
echo "$@" > npm-args
[ -f package-lock.json ] || exit 9
mkdir -p node_modules/.bin node_modules/wrangler/bin node_modules/@cloudflare/workerd-linux-64/bin
touch node_modules/.bin/node node_modules/wrangler/bin/wrangler.js
touch node_modules/@cloudflare/workerd-linux-64/bin/workerd
"""


def test_install_copies_the_pins_runs_npm_ci_once_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "npm").write_text(FAKE_NPM)
    (bindir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    target = tmp_path / "tools"
    tools, installed = workertools.install(target)
    assert installed and tools.root == target
    assert (target / "npm-args").read_text().split() == ["ci", "--no-audit", "--no-fund"]
    pinned = workertools.pinned_files()
    for name in workertools.PINNED:
        assert (target / name).read_bytes() == (pinned / name).read_bytes()
    (target / "npm-args").unlink()
    assert workertools.install(target)[1] is False  # there already: npm not asked
    assert not (target / "npm-args").exists()


def test_install_without_npm_or_with_a_failing_npm_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(workertools.UsageError) as failed:
        workertools.install(tmp_path / "a")
    assert "needs npm" in failed.value.message
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "npm").write_text("#!/bin/sh\necho 'npm ERR! network unreachable' >&2\nexit 1\n")
    (bindir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(workertools.UsageError) as failed:
        workertools.install(tmp_path / "b")
    assert "failed with 1: npm ERR! network unreachable" in failed.value.message
    assert "registry" in failed.value.hint
