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
