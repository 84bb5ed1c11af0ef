"""branchline.toml loading: the schema, interpolation, masking and the error messages."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from branchline.config import (
    CONFIG_FILENAME,
    Config,
    find_config,
    format_duration,
    load_config,
    parse_duration,
)
from branchline.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "codex" / "branchline.toml"

BASE = """\
[project]
name = "codex"
zone = "codex.localhost"

[database]
migrate = "python -m migrate"

[services.api]
path = "services/api"
run = "python -m api"

[services.web]
path = "services/web"
run = "python -m web"
"""


DIRS = ("services/api", "services/web")


def write(tmp_path: Path, text: str, dirs: tuple[str, ...] = DIRS) -> Path:
    for directory in dirs:
        (tmp_path / directory).mkdir(parents=True, exist_ok=True)
    file = tmp_path / CONFIG_FILENAME
    file.write_text(text, encoding="utf-8")
    return file


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), env=env or {})


def error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)
    err = caught.value
    assert err.exit_code == 2
    assert "\n" not in str(err) and "\n" not in err.hint
    assert err.file == str(tmp_path / CONFIG_FILENAME)
    return err


# ---------------------------------------------------------------------------- example


def test_example_loads_without_any_environment() -> None:
    config = load_config(EXAMPLE, env={})
    assert config.project.name == "codex"
    assert config.project.zone == "codex.localhost"
    assert config.path == EXAMPLE
    assert config.root == EXAMPLE.parent
    assert [s.name for s in config.services_in_deploy_order()] == ["api", "auth", "web"]
    assert {s.subdomain for s in config.services.values()} == {"api", "auth", "web"}
    assert config.database.migrate == ("python", "migrate.py")
    assert config.services["api"].env["LOG_LEVEL"] == "info"
    e2e = config.tests["e2e"]
    assert e2e.database and e2e.own_branch and e2e.paths == ("services/web/**",)
    assert config.tests["integration"].database and not config.tests["integration"].own_branch
    assert config.secrets.preview.generate == ("AUTH_SECRET",)
    assert config.secrets.production.names == ("AUTH_SECRET", "PAYMENT_WEBHOOK_SECRET")
    assert config.health.first_wait == timedelta(0)
    for service in config.services.values():
        assert config.service_dir(service).is_dir()
    json.dumps(config.display_dict())  # plain data


def test_example_reads_its_variables_from_the_environment() -> None:
    config = load_config(EXAMPLE.parent, env={"CODEX_LOG_LEVEL": "debug"})
    assert config.services["web"].env["LOG_LEVEL"] == "debug"


# ------------------------------------------------------------------ the six mistakes


def test_unknown_key_with_near_miss(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + "\n[helth]\nretries = 3\n")
    assert err.key == "helth"
    assert "unknown key `helth`" in str(err)
    assert err.hint == "did you mean `health`?"
    assert err.line == 16


def test_nested_unknown_key_names_its_table(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + "\n[health]\nretires = 3\n")
    assert err.key == "health.retires"
    assert "did you mean `retries`?" in err.hint
    assert err.line == 17


def test_unknown_key_without_near_miss_lists_allowed_keys(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + "\n[preview]\nzzzz = 1\n")
    assert err.key == "preview.zzzz"
    assert "`ttl`" in err.hint and "`max_live`" in err.hint


def test_wrong_type(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + '\n[health]\nretries = "ten"\n')
    assert err.key == "health.retries"
    assert "health.retries" in str(err)
    assert "expected a whole number, got 'ten'" in str(err)
    assert err.hint == "write `retries = 10`"
    assert err.line == 17


def test_missing_required_field(tmp_path: Path) -> None:
    err = error(tmp_path, BASE.replace('run = "python -m web"\n', ""))
    assert err.key == "services.web.run"
    assert "missing required key `run`" in str(err)
    assert "`[services.web]`" in err.hint and "run = " in err.hint
    assert err.line == 12  # the table's header: the key itself is not there


def test_a_worker_service_has_no_run_and_a_process_service_needs_one(tmp_path: Path) -> None:
    worker = BASE.replace('run = "python -m web"\n', 'runtime = "worker"\nbuild = "npm ci"\n')
    config = load(tmp_path, worker)
    assert config.services["web"].runtime == "worker" and config.services["web"].run is None
    assert config.services["api"].runtime == "process"
    err = error(
        tmp_path, BASE.replace('run = "python -m web"\n', 'runtime = "worker"\nrun = "x"\n')
    )
    assert err.key == "services.web.run" and "a worker service has no `run`" in str(err)
    err = error(tmp_path, BASE.replace('run = "python -m web"\n', 'runtime = "lambda"\n'))
    assert err.key == "services.web.runtime"
    err = error(tmp_path, BASE.replace('run = "python -m web"\n', ""))
    assert 'runtime = "worker"' in err.hint


def test_missing_required_table(tmp_path: Path) -> None:
    err = error(tmp_path, BASE.replace('[database]\nmigrate = "python -m migrate"\n', ""))
    assert err.key == "database"
    assert "`[database]`" in err.hint and "`migrate`" in err.hint


def test_undefined_variable(tmp_path: Path) -> None:
    text = BASE.replace('"python -m migrate"', '"python -m migrate ${MIGRATE_FLAGS}"')
    err = error(tmp_path, text)
    assert err.key == "database.migrate"
    assert "MIGRATE_FLAGS" in str(err)
    assert "export MIGRATE_FLAGS=" in err.hint and "${MIGRATE_FLAGS:-" in err.hint
    assert err.line == 6


def test_service_path_that_does_not_exist(tmp_path: Path) -> None:
    err = error(tmp_path, BASE.replace('path = "services/web"', 'path = "services/www"'))
    assert err.key == "services.web.path"
    assert "path `services/www` does not exist" in str(err)
    assert str(tmp_path) in str(err)
    assert "services/www" in err.hint
    assert err.line == 13


def test_service_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "web").write_text("not a directory")
    file = write(tmp_path, BASE, dirs=("services/api",))
    with pytest.raises(ConfigError) as caught:
        load_config(file, env={})
    assert caught.value.key == "services.web.path"
    assert "is not a directory" in str(caught.value)


def test_duplicate_subdomain_names_both_services(tmp_path: Path) -> None:
    text = BASE.replace('run = "python -m web"', 'run = "python -m web"\nsubdomain = "api"')
    err = error(tmp_path, text)
    assert err.key == "services.web.subdomain"
    assert "`api` and `web`" in str(err)
    assert "subdomain" in err.hint and "[services.web]" in err.hint
    assert err.line == 15


def test_duplicate_with_a_defaulted_subdomain(tmp_path: Path) -> None:
    text = BASE.replace('run = "python -m api"', 'run = "python -m api"\nsubdomain = "web"')
    err = error(tmp_path, text)
    assert "`api` and `web`" in str(err)
    assert err.line == 13  # web's subdomain is its name: point at `[services.web]`


# --------------------------------------------------------------- other config errors


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + "\n[health]\nretries = ten\n")
    assert err.line == 17
    assert "invalid TOML" in str(err)
    assert str(err).startswith(f"{tmp_path / CONFIG_FILENAME}:17: ")


def test_missing_file_points_to_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.toml")
    assert "branchline init" in caught.value.hint
    with pytest.raises(ConfigError):
        load_config(tmp_path)  # a directory without branchline.toml


def test_find_config_walks_up(tmp_path: Path) -> None:
    file = write(tmp_path, BASE)
    deep = tmp_path / "services" / "api" / "src"
    deep.mkdir()
    assert find_config(deep) == file.resolve()
    assert find_config(file) == file.resolve()


def test_find_config_without_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        find_config(tmp_path)
    assert "branchline init" in caught.value.hint


def test_wrong_literal(tmp_path: Path) -> None:
    err = error(tmp_path, BASE.replace("[database]", '[database]\nprovider = "postgres"'))
    assert err.key == "database.provider"
    assert "'local' or 'neon'" in str(err)
    assert err.hint == 'write `provider = "local"`'


def test_invalid_names(tmp_path: Path) -> None:
    err = error(tmp_path, BASE.replace("[services.web]", "[services.Web_1]"))
    assert err.key == "services.Web_1"
    assert "services.web-1" in err.hint
    err = error(tmp_path, BASE.replace('name = "codex"', 'name = "Codex App"'))
    assert err.key == "project.name"
    err = error(tmp_path, BASE.replace('"codex.localhost"', '"codex"'))
    assert err.key == "project.zone"
    assert "zone = " in err.hint


def test_zone_is_normalized(tmp_path: Path) -> None:
    config = load(tmp_path, BASE.replace('"codex.localhost"', '"Codex.Localhost."'))
    assert config.project.zone == "codex.localhost"


def test_array_item_of_wrong_type(tmp_path: Path) -> None:
    err = error(tmp_path, BASE.replace('"python -m migrate"', '["python", 3]'))
    assert err.key == "database.migrate[1]"
    assert "expected a string, got 3" in str(err)
    assert "quoted string" in err.hint


def test_unsplittable_and_empty_commands(tmp_path: Path) -> None:
    err = error(tmp_path, BASE.replace('"python -m migrate"', '"python -m \'migrate"'))
    assert err.key == "database.migrate"
    assert "cannot split" in str(err)
    assert '["sh", "-c", "..."]' in err.hint
    err = error(tmp_path, BASE.replace('"python -m migrate"', "[]"))
    assert "empty" in str(err)


def test_commands_are_split_never_shelled(tmp_path: Path) -> None:
    text = BASE.replace('"python -m api"', """"app --name 'a b' && rm -rf /" """)
    config = load(tmp_path, text)
    assert config.services["api"].run == ("app", "--name", "a b", "&&", "rm", "-rf", "/")
    text = BASE.replace('"python -m api"', '["sh", "-c", "exec app --port $PORT"]')
    assert load(tmp_path, text).services["api"].run == ("sh", "-c", "exec app --port $PORT")


def test_reserved_and_invalid_env_names(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + '\n[services.web.env]\nPORT = "8000"\n')
    assert err.key == "services.web.env.PORT"
    assert err.line == 17
    err = error(tmp_path, BASE + '\n[services.web.env]\n"BAD-NAME" = "1"\n')
    assert err.key == "services.web.env.BAD-NAME"
    err = error(tmp_path, BASE + "\n[services.web.env]\nWORKERS = 4\n")
    assert "expected a string, got 4" in str(err)


def test_health_path_must_be_absolute(tmp_path: Path) -> None:
    text = BASE.replace('run = "python -m web"', 'run = "python -m web"\nhealth_path = "health"')
    err = error(tmp_path, text)
    assert err.key == "services.web.health_path"
    assert err.hint == 'write `health_path = "/health"`'


def test_test_job_service_must_exist(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + '\n[tests.e2e]\ncommand = "pytest"\nservice = "wbe"\n')
    assert err.key == "tests.e2e.service"
    assert err.hint == "did you mean `web`?"


def test_section_of_wrong_type(tmp_path: Path) -> None:
    err = error(tmp_path, "preview = 3\n" + BASE)
    assert err.key == "preview"
    assert "expected a table" in str(err)
    assert err.line == 1


def test_max_live_must_be_positive(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + "\n[preview]\nmax_live = 0\n")
    assert err.key == "preview.max_live"
    assert "at least 1" in str(err)


# ---------------------------------------------------------------------- interpolation


def test_interpolation_from_env_default_and_dollar(tmp_path: Path) -> None:
    text = BASE + (
        "\n[services.web.env]\n"
        'SET = "${A}"\n'
        'DEFAULTED = "${UNSET:-fallback}"\n'
        'EMPTY = "${EMPTY:-used}"\n'
        'BOTH = "x-${A}-${B:-y}"\n'
        'DOLLAR = "cost $$5 and $$${A}"\n'
        'SHELL = "$PORT"\n'
    )
    env = load(tmp_path, text, env={"A": "alpha", "EMPTY": ""}).services["web"].env
    assert env == {
        "SET": "alpha",
        "DEFAULTED": "fallback",
        "EMPTY": "used",
        "BOTH": "x-alpha-y",
        "DOLLAR": "cost $5 and $alpha",
        "SHELL": "$PORT",
    }


def test_interpolation_in_nested_arrays_and_tables(tmp_path: Path) -> None:
    text = BASE.replace('"python -m migrate"', '["python", "-m", "${MIGRATOR}"]').replace(
        'path = "services/web"', 'path = "${WEB_DIR}"\npaths = ["${WEB_DIR}/**", "shared/**"]'
    )
    config = load(tmp_path, text, env={"MIGRATOR": "codex.migrate", "WEB_DIR": "services/web"})
    assert config.database.migrate == ("python", "-m", "codex.migrate")
    assert config.services["web"].path == "services/web"
    assert config.services["web"].paths == ("services/web/**", "shared/**")


def test_interpolated_numbers_are_validated(tmp_path: Path) -> None:
    text = BASE + '\n[health]\nretries = "${RETRIES:-3}"\n'
    assert load(tmp_path, text).health.retries == 3
    err = error(tmp_path, text, env={"RETRIES": "many"})
    assert err.key == "health.retries"


def test_undefined_variable_inside_an_array(tmp_path: Path) -> None:
    err = error(tmp_path, BASE.replace('"python -m migrate"', '["python", "${NOPE}"]'))
    assert err.key == "database.migrate[1]"
    assert "NOPE" in str(err)
    assert err.line == 6


@pytest.mark.parametrize("bad", ["${", "${1ABC}", "${A:-${B}}", "x ${A"])
def test_malformed_reference(tmp_path: Path, bad: str) -> None:
    err = error(tmp_path, BASE.replace('"python -m migrate"', f'"python {bad}"'), env={"A": "1"})
    assert err.key == "database.migrate"
    assert "malformed" in str(err)
    assert "${NAME:-default}" in err.hint


# -------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30, timedelta(seconds=30)),
        (1.5, timedelta(seconds=1.5)),
        ("500ms", timedelta(milliseconds=500)),
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("72h", timedelta(hours=72)),
        ("2d", timedelta(days=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("0.5s", timedelta(milliseconds=500)),
        ("45", timedelta(seconds=45)),
    ],
)
def test_parse_duration(value: object, expected: timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize("value", ["", "5 minutes", "m5", "-5s", -1, True, "1h30", [1]])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(seconds=30), "30s"),
        (timedelta(hours=72), "72h"),
        (timedelta(hours=1, minutes=30), "1h30m"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


def test_bad_duration_in_config(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + '\n[preview]\nttl = "3 days"\n')
    assert err.key == "preview.ttl"
    assert "got '3 days'" in str(err)
    assert 'ttl = "30s"' in err.hint and "1h30m" in err.hint
    assert err.line == 17


def test_durations_in_config(tmp_path: Path) -> None:
    text = BASE + '\n[tests.unit]\ncommand = "pytest"\ntimeout = 90\n\n[preview]\nttl = "1d"\n'
    config = load(tmp_path, text)
    assert config.tests["unit"].timeout == timedelta(seconds=90)
    assert config.preview.ttl == timedelta(days=1)
    assert config.preview.max_live == 10
    assert config.display_dict()["tests"]["unit"]["timeout"] == "1m30s"


# ----------------------------------------------------------------------------- health

# Cloudflare runs Workers only: the same project, its services Workers.
WORKERS = BASE.replace('run = "python -m api"', 'runtime = "worker"').replace(
    'run = "python -m web"', 'runtime = "worker"'
)
CLOUDFLARE = """
[compute]
provider = "cloudflare"

[compute.cloudflare]
account_id = "acc"
api_token = "t"
"""


def test_health_defaults_locally(tmp_path: Path) -> None:
    health = load(tmp_path, BASE).health
    assert (health.first_wait, health.later_wait) == (timedelta(0), timedelta(0))
    assert health.retries == 10
    assert health.backoff_base == timedelta(milliseconds=100)
    assert health.service_timeout == timedelta(minutes=5)


def test_health_defaults_on_cloudflare_are_the_reference(tmp_path: Path) -> None:
    health = load(tmp_path, WORKERS + CLOUDFLARE).health
    assert health.first_wait == timedelta(seconds=30)
    assert health.later_wait == timedelta(seconds=15)
    assert health.retries == 10
    assert health.service_timeout == timedelta(minutes=5)
    assert [d.total_seconds() for d in health.backoff_schedule()[:4]] == [5, 10, 20, 40]
    assert len(health.backoff_schedule()) == 10
    assert health.wait_before(0) == timedelta(seconds=30)
    assert health.wait_before(2) == timedelta(seconds=15)


def test_health_values_set_by_the_user_win(tmp_path: Path) -> None:
    text = WORKERS + CLOUDFLARE + '\n[health]\nfirst_wait = "1s"\nretries = 2\n'
    health = load(tmp_path, text).health
    assert health.first_wait == timedelta(seconds=1)
    assert health.later_wait == timedelta(seconds=15)
    assert health.backoff_schedule() == (timedelta(seconds=5), timedelta(seconds=10))


def test_cloud_compute_needs_its_table(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + '\n[compute]\nprovider = "cloudflare"\n')
    assert err.key == "compute.cloudflare"
    assert "[compute.cloudflare]" in err.hint


# ------------------------------------------------------------------------- providers


def test_neon_requires_its_table(tmp_path: Path) -> None:
    err = error(tmp_path, BASE.replace("[database]", '[database]\nprovider = "neon"'))
    assert err.key == "database.neon"
    assert "[database.neon]" in str(err) and "[database.neon]" in err.hint


def test_neon_with_its_table(tmp_path: Path) -> None:
    text = BASE.replace("[database]", '[database]\nprovider = "neon"') + (
        '\n[database.neon]\nproject_id = "p-1"\napi_key = "${NEON_API_KEY}"\n'
    )
    config = load(tmp_path, text, env={"NEON_API_KEY": "neon-key-value"})
    assert config.database.neon is not None
    assert config.database.neon.api_key.get_secret_value() == "neon-key-value"
    assert "neon-key-value" not in repr(config)
    err = error(tmp_path, text.replace('project_id = "p-1"\n', ""), env={"NEON_API_KEY": "k"})
    assert err.key == "database.neon.project_id"


def test_neon_table_with_local_provider_is_allowed(tmp_path: Path) -> None:
    text = BASE + '\n[database.neon]\nproject_id = "p-1"\napi_key = "k"\n'
    assert load(tmp_path, text).database.provider == "local"


GITHUB = BASE + '\n[forge]\nprovider = "github"\n\n[forge.github]\nrepository = "acme/codex"\n'


def test_github_forge_with_a_token_or_an_app(tmp_path: Path) -> None:
    from branchline.providers.registry import github_client

    config = load(tmp_path, GITHUB)
    assert config.forge.github is not None and config.forge.github.token is None
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GITHUB_TOKEN", "ghp-from-the-environment")
        client = github_client(config)
    assert client.credentials.token == "ghp-from-the-environment"
    assert "ghp-" not in repr(client.credentials)
    app = load(tmp_path, GITHUB + 'app_id = 12\nprivate_key = "${KEY}"\n', env={"KEY": "pem"})
    creds = github_client(app).credentials
    assert (creds.app_id, creds.private_key, creds.token) == (12, "pem", None)
    assert (client.owner, client.name) == ("acme", "codex")


@pytest.mark.parametrize(
    ("extra", "key", "says"),
    [
        ("app_id = 12\n", "forge.github.private_key", "both `app_id` and `private_key`"),
        ('private_key = "pem"\n', "forge.github.app_id", "both `app_id` and `private_key`"),
        ('app_id = 12\nprivate_key = "pem"\ntoken = "t"\n', "forge.github.token", "choose one"),
        ("app_id = -3\n", "forge.github.app_id", ""),
        ('repository = "not a repository"\n', "forge.github.repository", ""),
    ],
)
def test_github_forge_settings_that_cannot_work(
    tmp_path: Path, extra: str, key: str, says: str
) -> None:
    text = GITHUB.replace('repository = "acme/codex"\n', "") + extra
    err = error(tmp_path, text)
    assert err.key == key
    assert says in str(err)


def test_github_forge_needs_a_repository(tmp_path: Path) -> None:
    from branchline.errors import UsageError
    from branchline.providers.registry import github_client

    config = load(tmp_path, GITHUB.replace('repository = "acme/codex"\n', ""))
    with pytest.raises(UsageError) as caught:
        github_client(config)
    assert "repository" in caught.value.hint


# --------------------------------------------------------------------- secrets, tests


def test_generate_must_be_a_subset_of_names(tmp_path: Path) -> None:
    text = BASE + '\n[secrets.preview]\nnames = ["AUTH_SECRET"]\ngenerate = ["SESSION_KEY"]\n'
    err = error(tmp_path, text)
    assert err.key == "secrets.preview.generate[0]"
    assert "SESSION_KEY" in str(err)
    assert "names" in err.hint


def test_production_secrets_are_never_generated(tmp_path: Path) -> None:
    text = BASE + '\n[secrets.production]\nnames = ["AUTH_SECRET"]\ngenerate = ["AUTH_SECRET"]\n'
    err = error(tmp_path, text)
    assert err.key == "secrets.production.generate"
    assert "branchline secret set AUTH_SECRET --env production" in err.hint
    assert err.line == 18


def test_secret_names_are_validated(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + '\n[secrets.test]\nnames = ["auth-secret"]\n')
    assert err.key == "secrets.test.names[0]"


def test_secret_names_are_at_most_128_characters(tmp_path: Path) -> None:
    too_long = "A" * 129
    err = error(tmp_path, BASE + f'\n[secrets.production]\nnames = ["OK", "{too_long}"]\n')
    assert err.key == "secrets.production.names[1]"
    assert err.line == 17
    assert "not a valid secret name" in err.detail
    assert "at most 128 characters" in err.hint
    longest = "A" * 128
    config = load(tmp_path, BASE + f'\n[secrets.production]\nnames = ["{longest}"]\n')
    assert config.secrets.production.names == (longest,)


def test_own_branch_needs_database(tmp_path: Path) -> None:
    text = BASE + '\n[tests.e2e]\ncommand = "pytest"\nown_branch = true\n'
    err = error(tmp_path, text)
    assert err.key == "tests.e2e.own_branch"
    assert "database = true" in err.hint
    assert err.line == 18
    config = load(tmp_path, text.replace("own_branch = true", "own_branch = true\ndatabase = true"))
    assert config.tests["e2e"].own_branch and config.tests["e2e"].name == "e2e"


def test_test_job_defaults(tmp_path: Path) -> None:
    job = load(tmp_path, BASE + '\n[tests.lint]\ncommand = "ruff check"\n').tests["lint"]
    assert job.paths == () and not job.database and not job.own_branch
    assert job.timeout == timedelta(minutes=15)


# ---------------------------------------------------------------------------- masking

SECRETS_TEXT = BASE.replace(
    '"python -m migrate"', '["migrate", "--password", "${DB_PASSWORD}"]'
) + (
    """
[services.web.env]
API_KEY = "literal-api-key"
COPY = "${SESSION_TOKEN}"
PLAIN = "visible"

[forge]
provider = "github"

[forge.github]
token = "${GH_TOKEN}"
"""
)
SECRETS_ENV = {"DB_PASSWORD": "db-pass-1", "SESSION_TOKEN": "sess-tok-2", "GH_TOKEN": "gh-tok-3"}


def test_display_dict_and_repr_mask_secrets(tmp_path: Path) -> None:
    config = load(tmp_path, SECRETS_TEXT, env=SECRETS_ENV)
    shown = json.dumps(config.display_dict())
    printed = repr(config) + str(config) + repr(config.services["web"]) + repr(config.database)
    for secret in ["db-pass-1", "sess-tok-2", "gh-tok-3", "literal-api-key"]:
        assert secret not in shown
        assert secret not in printed
    data = config.display_dict()
    assert data["services"]["web"]["env"] == {"API_KEY": "***", "COPY": "***", "PLAIN": "visible"}
    assert data["database"]["migrate"] == ["migrate", "--password", "***"]
    assert data["forge"]["github"]["token"] == "***"
    assert "visible" in shown
    # The real values are still there for whoever needs them.
    assert config.services["web"].env["API_KEY"] == "literal-api-key"
    assert config.database.migrate[2] == "db-pass-1"


def test_secret_values_for_log_masking(tmp_path: Path) -> None:
    config = load(tmp_path, SECRETS_TEXT, env=SECRETS_ENV)
    assert config.secret_values() == {"db-pass-1", "sess-tok-2", "gh-tok-3", "literal-api-key"}


def test_errors_never_show_secret_values(tmp_path: Path) -> None:
    text = BASE + '\n[health]\nretries = "${RETRY_TOKEN}"\n'
    err = error(tmp_path, text, env={"RETRY_TOKEN": "hunter2"})
    assert err.key == "health.retries"
    assert "hunter2" not in str(err) and "hunter2" not in err.hint
    text = BASE.replace('"codex.localhost"', '"${ZONE_SECRET}"')
    err = error(tmp_path, text, env={"ZONE_SECRET": "not a domain"})
    assert "not a domain" not in str(err)


# ------------------------------------------------------------------------ deploy order


def test_deploy_order_defaults_to_position(tmp_path: Path) -> None:
    config = load(tmp_path, BASE)
    assert [s.name for s in config.services_in_deploy_order()] == ["api", "web"]
    assert (config.services["api"].order, config.services["web"].order) == (1, 2)


def test_deploy_order_by_order_then_name(tmp_path: Path) -> None:
    text = (
        BASE.replace('run = "python -m api"', 'run = "python -m api"\norder = 5')
        + '\n[services.auth]\npath = "services/auth"\nrun = "x"\norder = 1\n'
        + '\n[services.admin]\npath = "services/admin"\nrun = "x"\norder = 5\n'
    )
    (tmp_path / "services" / "auth").mkdir(parents=True)
    (tmp_path / "services" / "admin").mkdir(parents=True)
    config = load(tmp_path, text)
    names = [s.name for s in config.services_in_deploy_order()]
    assert names == ["auth", "web", "admin", "api"]  # web defaults to position 2


def test_service_defaults(tmp_path: Path) -> None:
    text = BASE.replace('path = "services/web"', 'path = "./services/web/"')
    web = load(tmp_path, text).services["web"]
    assert web.name == "web"
    assert web.subdomain == "web"
    assert web.path == "services/web"
    assert web.paths == ("services/web/**",)
    assert web.health_path == "/health"
    assert web.build is None


def test_absolute_service_path_is_rejected(tmp_path: Path) -> None:
    err = error(tmp_path, BASE.replace('path = "services/web"', f'path = "{tmp_path}"'))
    assert err.key == "services.web.path"
    assert "absolute" in str(err)


ADOPTING = """
[project]
name = "shop"
zone = "{zone}"

[database]
migrate = "{migrate}"

[services.api]
path = "."
run = ["{run}"]

[tests.unit]
command = ["{test}"]

[preview]
max_live = {max_live}

[security]
sandbox = "{sandbox}"
"""


def _config(tmp_path: Path, name: str, **values: object) -> Config:
    path = tmp_path / name / "branchline.toml"
    path.parent.mkdir()
    path.write_text(ADOPTING.format(**values))
    return load_config(path, env={})


def test_a_commit_changes_its_services_and_tests_never_its_guards(tmp_path: Path) -> None:
    served = _config(tmp_path, "served", zone="shop.localhost", migrate="python migrate.py",
                     run="serve-v1", test="pytest", max_live=3, sandbox="bubblewrap")  # fmt: skip
    branch = _config(tmp_path, "branch", zone="evil.example", migrate="curl evil",
                     run="serve-v2", test="pytest -k new", max_live=99, sandbox="off")  # fmt: skip
    adopted = served.adopt(branch)
    assert adopted.services["api"].run == ("serve-v2",)
    assert adopted.tests["unit"].command == ("pytest -k new",)
    # Where it points, how it migrates, its limits and its sandbox stay as served.
    assert adopted.project.zone == "shop.localhost"
    assert adopted.database.migrate == ("python", "migrate.py")
    assert adopted.preview.max_live == 3
    assert adopted.security.sandbox == "bubblewrap"
    assert adopted.path == served.path


def test_a_reload_takes_everything_but_what_serve_started_with(tmp_path: Path) -> None:
    served = _config(tmp_path, "served", zone="shop.localhost", migrate="m", run="v1",
                     test="t", max_live=3, sandbox="bubblewrap")  # fmt: skip
    newer = _config(tmp_path, "newer", zone="other.localhost", migrate="m", run="v2",
                    test="t", max_live=5, sandbox="off")  # fmt: skip
    assert served.changed_at_start(newer) == ["project", "security"]
    reloaded = served.reloaded(newer)
    assert reloaded.preview.max_live == 5 and reloaded.services["api"].run == ("v2",)
    assert reloaded.project.zone == "shop.localhost" and reloaded.security.sandbox == "bubblewrap"


# ---------------------------------------------------------------- limits and retention


def test_limits_retention_and_the_migrate_deadline_have_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, BASE)
    assert config.limits.step_log == 5 * 1024 * 1024
    assert config.limits.step_timeout == timedelta(hours=1)
    assert config.retention.runs == config.retention.logs == timedelta(days=30)
    assert config.retention.artifacts == timedelta(days=30)
    assert config.database.migrate_timeout == timedelta(minutes=10)


def test_limits_retention_and_the_migrate_deadline_are_configurable(tmp_path: Path) -> None:
    text = BASE.replace('migrate = "python -m migrate"\n',
                        'migrate = "python -m migrate"\nmigrate_timeout = "90s"\n')  # fmt: skip
    text += '\n[limits]\nstep_log = "512KB"\nstep_timeout = "2h"\n'
    text += '\n[retention]\nruns = "90d"\nlogs = "7d"\nartifacts = "2d"\n'
    config = load(tmp_path, text)
    assert config.database.migrate_timeout == timedelta(seconds=90)
    assert config.limits.step_log == 512 * 1024
    assert config.limits.step_timeout == timedelta(hours=2)
    assert (config.retention.runs, config.retention.logs, config.retention.artifacts) == (
        timedelta(days=90), timedelta(days=7), timedelta(days=2),
    )  # fmt: skip


def test_a_bad_step_log_size_says_how_to_write_one(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + '\n[limits]\nstep_log = "lots"\n')
    assert err.key == "limits.step_log"
    assert "expected a size, got 'lots'" in str(err)
    assert 'step_log = "5MB"' in err.hint
    tiny = error(tmp_path, BASE + "\n[limits]\nstep_log = 10\n")
    assert "at least 1KB" in str(tiny)
    never = error(tmp_path, BASE + '\n[limits]\nstep_timeout = "0s"\n')
    assert never.key == "limits.step_timeout" and "longer than zero" in str(never)


# ----------------------------------------------------------------- listen addresses


def test_bind_addresses_default_to_loopback(tmp_path: Path) -> None:
    config = load(tmp_path, BASE)
    assert (config.edge.bind, config.server.bind) == ("127.0.0.1", "127.0.0.1")


@pytest.mark.parametrize(
    ("written", "kept"),
    [("0.0.0.0", "0.0.0.0"), ("::", "::"),  # noqa: S104 ("::1", "::1"), ("0:0::0001", "::1"),
     ("192.0.2.7", "192.0.2.7"), ("fd00::2", "fd00::2")],
)  # fmt: skip
def test_a_bind_is_any_ip_address_in_one_spelling(tmp_path: Path, written: str, kept: str) -> None:
    config = load(tmp_path, BASE + f'\n[edge]\nbind = "{written}"\n[server]\nbind = "{written}"\n')
    assert (config.edge.bind, config.server.bind) == (kept, kept)


@pytest.mark.parametrize("written", ["localhost", "[::1]", "0.0.0.0:8080", "300.1.1.1", ""])
def test_a_bind_that_is_no_ip_address_is_a_config_error(tmp_path: Path, written: str) -> None:
    err = error(tmp_path, BASE + f'\n[server]\nbind = "{written}"\n')
    assert err.key == "server.bind"
    assert f"`{written}` is not an IP address" in str(err)
    assert 'bind = "127.0.0.1"' in err.hint and 'bind = "0.0.0.0"' in err.hint
    assert err.line == 17


def test_a_bind_that_is_not_a_string_says_what_to_write(tmp_path: Path) -> None:
    err = error(tmp_path, BASE + "\n[edge]\nbind = 8080\n")
    assert err.key == "edge.bind"
    assert '"127.0.0.1"' in err.hint
