"""`data`, `seed`, `predestroy` and `[database.mask]` in branchline.toml: what they
accept, the errors that say how to fix them, and the steps they put in the pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest

from branchline.branchdata import DataPlan, MaskRule, plan_for
from branchline.config import Config
from branchline.engine.model import Call
from branchline.errors import ConfigError
from branchline.pipelines import testing
from tests.unit.test_config import BASE, error, load

SHA = "1a2b3c4d5e6f" + "0" * 28
MASKS = """
[database.mask]
"users.email" = "email"
"users.password" = "null"
"billing.cards.number" = "redact"
"users.bio" = { sql = "'bio of user ' || id" }
"sessions" = "truncate"
"audit.events" = "truncate"
"""


def with_tests(tests: str) -> str:
    return BASE + tests


def test_mask_rules_and_data_choices_load(tmp_path: Path) -> None:
    config = load(tmp_path, BASE.replace("[services.api]", MASKS + "\n[services.api]") + """
[preview]
data = "seed"
seed = "python seed.py"
predestroy = ["python", "export.py", "--reason", "closed"]
hook_timeout = "2m"

[tests.integration]
command = "pytest"
database = true
data = "schema"
""")  # fmt: skip
    assert config.preview.data == "seed" and config.preview.seed == ("python", "seed.py")
    assert config.preview.predestroy == ("python", "export.py", "--reason", "closed")
    assert config.preview.hook_timeout.total_seconds() == 120
    assert config.tests["integration"].data == "schema"
    assert config.display_dict()["database"]["mask"]["users.bio"] == {"sql": "'bio of user ' || id"}
    plan = plan_for(config, "copy")
    assert plan.masks == (
        MaskRule("users.email", "email"), MaskRule("users.password", "null"),
        MaskRule("billing.cards.number", "redact"),
        MaskRule("users.bio", sql="'bio of user ' || id"),
        MaskRule("sessions", "truncate"), MaskRule("audit.events", "truncate"),
    )  # fmt: skip
    assert [m.table for m in plan.masks] == [
        (None, "users"), (None, "users"), ("billing", "cards"), (None, "users"),
        (None, "sessions"), ("audit", "events"),
    ]  # fmt: skip
    # Only a copy is masked: the other choices hold no production row to mask.
    assert plan_for(config, "schema") == DataPlan("schema")
    assert plan_for(config, "seed").rows == "schema"
    assert DataPlan.from_dict(plan.as_dict()) == plan  # kept in the branch's record


def test_defaults_are_todays_behaviour(tmp_path: Path) -> None:
    config = load(tmp_path, with_tests('\n[tests.it]\ncommand = "pytest"\ndatabase = true\n'))
    assert config.preview.data == "copy" and config.preview.seed is None
    assert config.preview.predestroy is None and config.tests["it"].data == "copy"
    assert not plan_for(config, "copy").changes_anything


def mask_error(tmp_path: Path, rule: str) -> ConfigError:
    return error(tmp_path, BASE + f"\n[database.mask]\n{rule}\n")


@pytest.mark.parametrize(
    ("rule", "key", "says", "hint"),
    [
        ('"users.emial" = "emial"', 'database.mask."users.emial"', "unknown masker `emial`",
         "did you mean `email`?"),
        ('"users" = "email"', "database.mask.users", "`users` names a table",
         '`"users.<column>" = ...`'),
        ('"a.b.c.d" = "null"', 'database.mask."a.b.c.d"', "is not a table or a column",
         '"users.email" = "email"'),
        ('"users.e-mail" = "null"', 'database.mask."users.e-mail"', "is not a table or a column",
         "unquoted"),
        ('"users..email" = "null"', 'database.mask."users..email"', "is not a table", "unquoted"),
        ('"public.users.email" = "truncate"', 'database.mask."public.users.email"',
         "names a column, and `truncate` empties a whole table", '`"public.users" = "truncate"`'),
        ('"users.email" = 3', 'database.mask."users.email"', "expected a masker name, got 3",
         "maskers: `email`"),
        ('"users.bio" = { expr = "1" }', 'database.mask."users.bio"',
         "expected `{ sql = \"...\" }`", "sql ="),
        ('"users.bio" = { sql = "" }', 'database.mask."users.bio".sql',
         "the SQL expression is empty", "sql ="),
        ('"users.bio" = { sql = "1; DROP TABLE users" }', 'database.mask."users.bio".sql',
         "contains `;`", "single expression"),
        ('"sessions" = { sql = "1" }', "database.mask.sessions", "names a table",
         '"truncate"'),
    ],
)  # fmt: skip
def test_mask_rule_errors(tmp_path: Path, rule: str, key: str, says: str, hint: str) -> None:
    err = mask_error(tmp_path, rule)
    assert err.key == key, err.as_dict()
    assert says in err.detail, err.as_dict()
    assert hint in err.hint, err.as_dict()
    assert err.line == 17  # the rule's own line


def test_data_choice_errors(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + '\n[preview]\ndata = "production"\n')
    assert err.key == "preview.data" and "'copy'" in str(err) and "'seed'" in str(err)
    err = error(tmp_path, BASE + '\n[preview]\ndata = "seed"\n')
    assert err.key == "preview.seed" and '`data = "seed"` needs a `seed` command' in str(err)
    assert "[preview]" in err.hint
    job = '\n[tests.it]\ncommand = "pytest"\n'
    err = error(tmp_path, with_tests(job + 'database = true\ndata = "seed"\n'))
    assert err.key == "tests.it.seed" and "needs a `seed` command" in str(err)
    err = error(tmp_path, with_tests(job + 'data = "schema"\n'))
    assert err.key == "tests.it.data" and "`data` needs `database = true`" in str(err)
    err = error(tmp_path, with_tests(job + 'seed = "python seed.py"\n'))
    assert err.key == "tests.it.seed" and "`seed` needs `database = true`" in str(err)


def test_jobs_sharing_a_branch_must_agree_on_its_data(tmp_path: Path) -> None:
    jobs = """
[tests.a]
command = "pytest a"
database = true
data = "schema"

[tests.b]
command = "pytest b"
database = true
"""
    err = error(tmp_path, with_tests(jobs))
    assert err.key == "tests.b.data"
    assert "`a` and `b` share the run's branch but want different data" in str(err)
    assert "own_branch = true" in err.hint
    # On a branch of its own, b may hold production's (masked) rows.
    config = load(tmp_path, with_tests(jobs + "own_branch = true\n"))
    assert (config.tests["a"].data, config.tests["b"].data) == ("schema", "copy")
    err = error(tmp_path, with_tests(jobs.replace('data = "schema"', 'data = "schema"\n'
                                                  'seed = "x"') + 'data = "schema"\n'))  # fmt: skip
    assert "want different data (seeds)" in str(err)


@pytest.fixture
def seeded(tmp_path: Path) -> Config:
    return load(tmp_path, with_tests("""
[tests.it]
command = "pytest"
database = true
data = "seed"
seed = ["python", "seed.py"]
timeout = "3m"

[tests.e2e]
command = "pytest e2e"
database = true
own_branch = true
data = "empty"
"""))  # fmt: skip


def test_the_testing_run_makes_each_branch_as_asked(seeded: Config) -> None:
    flow = testing.workflow(seeded, sha=SHA, pr=8)
    database = flow.job("database")
    assert [s.name for s in database.steps] == ["status", "branch", "migrate", "seed"]
    create, seed = database.steps[1].run, database.steps[3].run
    assert isinstance(create, Call) and create.params["data"] == "seed"
    assert seed == Call(
        "branch.seed", {"name": "pr-8-1a2b3c4d", "command": ["python", "seed.py"], "timeout": 180.0}
    )
    e2e = flow.job("e2e")
    assert [s.name for s in e2e.steps] == ["branch", "migrate", "e2e"]
    own = e2e.steps[0].run
    assert isinstance(own, Call) and own.params["data"] == "empty"
    assert own.params["publish"] == "e2e:database_url"
