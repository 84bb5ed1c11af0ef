"""What differs between the demo's example apps, without playing it: each example's
changes apply to its own files (the story's sync adds a migration, "broken" breaks
web), the CLI offers every example, and `--example workers` without the Workers tools
fails at once, before anything is made."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from branchline import demo as demo_module
from branchline.cli.demo import Example as ExampleChoice
from branchline.demo import example
from branchline.errors import UsageError
from branchline.providers.compute.workertools import WorkersToolsMissingError


@pytest.mark.parametrize("name", sorted(example.EXAMPLES))
def test_each_example_is_found_and_its_changes_apply_to_its_files(
    name: str, tmp_path: Path
) -> None:
    played = example.EXAMPLES[name]
    found = played.find()
    assert found == example.EXAMPLES_IN_CHECKOUT / name  # an editable install
    copy = tmp_path / name
    shutil.copytree(found, copy, ignore=shutil.ignore_patterns("node_modules", "__pycache__"))
    # The sync: a migration the example does not have yet, numbered after its last.
    migration = copy / played.sync.path
    assert not migration.exists()
    numbers = sorted(p.name.split("_", 1)[0] for p in (copy / "migrations").glob("[0-9]*_*.sql"))
    assert migration.name.split("_", 1)[0] > numbers[-1]
    played.sync.apply(copy)
    assert migration.read_text() == played.sync.text
    # Broken: web's code, changed once, where its anchor is.
    target = copy / played.broken.path
    before = target.read_text()
    played.broken.apply(copy)
    after = target.read_text()
    assert played.broken.before is not None and played.broken.text in after
    assert after.replace(played.broken.text, "", 1) == before
    assert played.broken.path.startswith("services/web/")


def test_a_change_whose_anchor_is_gone_says_so(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print('hello')\n")
    change = example.Change("a change", "app.py", "# inserted\n", before="\nfrom common")
    with pytest.raises(UsageError, match=r"cannot change app\.py"):
        change.apply(tmp_path)
    example.Change("a change", "app.py", "# inserted\n", before="print").apply(tmp_path)
    assert (tmp_path / "app.py").read_text() == "# inserted\nprint('hello')\n"


def test_the_command_line_offers_every_example() -> None:
    assert {choice.value for choice in ExampleChoice} == set(example.EXAMPLES)


def test_only_codex_refers_to_a_variable_of_the_demo() -> None:
    assert set(example.CODEX.variables()) == {"CODEX_PYTHON_BIN"}
    assert example.WORKERS.variables() == {}


def test_the_workers_example_without_its_tools_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRANCHLINE_WORKERS_TOOLS", str(tmp_path / "no-tools"))

    def made(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the demo began (its directory made) without the Workers tools")

    monkeypatch.setattr(demo_module, "Demo", made)
    console = Console(file=io.StringIO(), width=200, color_system=None)
    with pytest.raises(WorkersToolsMissingError) as raised:
        demo_module.run(console, example="workers")
    assert "npm ci" in (raised.value.hint or "")


def test_an_unknown_example_is_refused() -> None:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    with pytest.raises(UsageError, match="one of codex, workers"):
        demo_module.run(console, example="nope")
