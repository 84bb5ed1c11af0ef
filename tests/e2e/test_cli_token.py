"""`branchline token`: create, change the scope in place (the token stays the same),
delete; mistakes are one-line errors with a hint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import run_cli


def test_token_scope_changes_in_place_and_mistakes_are_explained(
    tmp_path: Path, state_dir: Path
) -> None:
    (tmp_path / "branchline.toml").write_text(
        '[project]\nname = "tok"\nzone = "tok.localhost"\n[database]\nmigrate = "true"\n'
    )
    env = {"BRANCHLINE_STATE_DIR": str(state_dir)}

    def cli(*args: str, code: int = 0) -> Any:
        done = run_cli("--json", *args, cwd=tmp_path, env=env)
        assert done.returncode == code, done.stdout + done.stderr
        return json.loads(done.stdout or done.stderr)

    made = cli("token", "create", "--name", "ci", "--scope", "write")
    assert cli("token", "scope", "ci", "--to", "read") == {"name": "ci", "scope": "read"}
    (listed,) = cli("token", "list")
    assert listed["name"] == "ci" and listed["scope"] == "read"
    unknown = cli("token", "scope", "nope", "--to", "read", code=2)
    assert "there is no token nope" in unknown["message"] and "token list" in unknown["hint"]
    bad = cli("token", "scope", "ci", "--to", "admin", code=2)
    assert "unknown scope 'admin'" in bad["message"] and "--to read" in bad["hint"]
    assert made["token"] not in json.dumps([unknown, bad, listed])
    human = run_cli("token", "scope", "ci", "--to", "write", cwd=tmp_path, env=env)
    assert human.returncode == 0 and "token ci may now write" in human.stdout
    assert cli("token", "delete", "ci") == {"name": "ci", "deleted": True}
