"""`[compute.cloudflare]` in branchline.toml and what the Cloudflare compute provider
uploads with a version (no network: the fake's runs are in tests/integration)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from branchline.config import Config, load_config_text
from branchline.environment import Environment
from branchline.errors import ConfigError
from branchline.providers import registry
from branchline.providers.compute import DeploymentEnv, Release, runtimes
from branchline.providers.compute.cloudflare import CloudflareComputeProvider
from branchline.providers.compute.cloudflare_api import Binding
from branchline.store import Store, locate_state

BASE = """\
[project]
name = "codex"
zone = "codex.example.com"

[database]
migrate = "true"

[compute]
provider = "cloudflare"

[services.api]
path = "services/api"
runtime = "worker"
"""
TABLE = '[compute.cloudflare]\naccount_id = "acc123"\nzone_id = "zone123"\n'


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    (tmp_path / "services" / "api").mkdir(parents=True, exist_ok=True)
    return load_config_text(text, tmp_path / "branchline.toml", env or {})


def test_the_table_is_required_and_the_defaults_name_scripts_as_the_reference(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as failed:
        load(tmp_path, BASE)
    assert "[compute.cloudflare]" in failed.value.message
    config = load(tmp_path, BASE + TABLE)
    cf = config.compute.cloudflare
    assert cf is not None and cf.api_token is None and cf.edge_url is None
    assert cf.script_name.format(project="codex", service="web", environment="preview-8") == (
        "codex-web-preview-8"
    )


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ("{project}-{service}", "must hold {service} and {environment}"),
        ("{service}-{environment}-{region}", "placeholder other than"),
        ("{service}.{environment}", "names Cloudflare refuses"),
    ],
)
def test_a_script_name_that_cannot_name_every_script_apart_is_refused(
    tmp_path: Path, template: str, said: str
) -> None:
    with pytest.raises(ConfigError) as failed:
        load(tmp_path, BASE + TABLE + f'script_name = "{template}"\n')
    assert said in failed.value.message


def test_a_process_service_is_refused_on_cloudflare_compute(tmp_path: Path) -> None:
    text = BASE.replace('runtime = "worker"', 'run = "python app.py"') + TABLE
    with pytest.raises(ConfigError) as failed:
        load(tmp_path, text)
    assert "runs Workers only" in failed.value.message
    assert 'runtime = "worker"' in failed.value.hint


def test_the_registry_makes_it_with_the_token_from_the_variable_and_the_dns_zone(
    tmp_path: Path,
) -> None:
    table = '[compute.cloudflare]\naccount_id = "acc123"\n'
    dns = '[dns]\nprovider = "cloudflare"\n[dns.cloudflare]\nzone_id = "dnszone"\n'
    config = load(tmp_path, BASE + table + dns)
    store = Store(locate_state(tmp_path, {"BRANCHLINE_STATE_DIR": str(tmp_path / "state")}))
    provider = registry.compute_provider(config, store)
    assert isinstance(provider, CloudflareComputeProvider)
    assert provider.client.zone_id == "dnszone" and provider.client.account_id == "acc123"
    client = registry.workers_client(config)
    assert client._token is None  # no variable set here: said when a call is made


def test_a_version_s_bindings_hide_secrets_and_credentials(tmp_path: Path) -> None:
    config = load(tmp_path, BASE + TABLE + '[services.api.env]\nMODE = "{{ environment }}"\n')
    location = tmp_path / "release"
    service = location / "tree" / "services" / "api"
    service.mkdir(parents=True)
    (service / "wrangler.toml").write_text(
        'name = "api"\nmain = "src/index.js"\ncompatibility_date = "2026-11-01"\n'
        'compatibility_flags = ["nodejs_compat"]\n[vars]\nSOURCE = "wrangler"\nMODE = "x"\n'
    )
    (location / runtimes.BUNDLE).mkdir()
    (location / runtimes.BUNDLE / "index.js").write_text("export default {}")
    store = Store(locate_state(tmp_path, {"BRANCHLINE_STATE_DIR": str(tmp_path / "state")}))
    provider = registry.compute_provider(config, store)
    assert isinstance(provider, CloudflareComputeProvider)
    release = Release(1, "api", "a" * 40, 1, str(location), datetime.now(UTC))
    env = DeploymentEnv(
        vars={"DATABASE_URL": "postgresql://u:pw-123@db:5432/app", "WEB_URL": "https://w/"},
        secrets={"API_KEY": "key-456"},
    )
    spec = config.services["api"]
    bundle, bindings = provider._upload_parts(
        spec, Environment.preview(8), release, env, "api-preview-8.codex.example.com"
    )
    assert bundle.entry == "index.js" and bundle.compatibility_flags == ("nodejs_compat",)
    kinds = {b.name: ("secret" if b.secret else "plain", b.text) for b in bindings}
    assert kinds["DATABASE_URL"][0] == "secret" and kinds["API_KEY"] == ("secret", "key-456")
    assert kinds["MODE"] == ("plain", "preview-8")  # the service's env over wrangler's [vars]
    assert kinds["SOURCE"] == ("plain", "wrangler")
    assert kinds["BRANCHLINE_COMMIT"] == ("plain", "a" * 40)
    assert kinds["WEB_URL"] == ("plain", "https://w/")
    # Shown anywhere (a log, a repr), a binding never carries its text.
    assert "key-456" not in repr(bindings) and "pw-123" not in repr(bindings)
    metadata = json.dumps([b.as_metadata() for b in bindings])
    assert '"type": "secret_text", "name": "API_KEY"' in metadata
    assert Binding("X", "v").as_metadata() == {"type": "plain_text", "name": "X", "text": "v"}


def test_exported_workflows_pass_the_token_for_workers_too(tmp_path: Path) -> None:
    from branchline.config import load_config
    from branchline.export import github_actions

    load(tmp_path, BASE + TABLE)
    (tmp_path / "branchline.toml").write_text(BASE + TABLE)
    env = github_actions.step_env(load_config(tmp_path / "branchline.toml", env={}))
    assert env["CLOUDFLARE_API_TOKEN"] == "${{ secrets.CLOUDFLARE_API_TOKEN }}"
