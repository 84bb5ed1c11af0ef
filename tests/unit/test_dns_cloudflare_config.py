"""`[dns.cloudflare]` in branchline.toml, and the Cloudflare DNS client's reading of
Cloudflare's answers (no network: the fake's runs are in tests/integration)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from branchline.config import Config, load_config, load_config_text
from branchline.errors import ConfigError
from branchline.export import github_actions
from branchline.providers.cloudflare_client import _retry_after
from branchline.providers.dns.cloudflare import Resolver

BASE = """\
[project]
name = "codex"
zone = "codex.example.com"

[database]
migrate = "true"

[dns]
provider = "cloudflare"

[services.api]
path = "services/api"
run = "true"
"""


def load(tmp_path: Path, table: str, env: dict[str, str] | None = None) -> Config:
    (tmp_path / "services" / "api").mkdir(parents=True, exist_ok=True)
    return load_config_text(BASE + table, tmp_path / "branchline.toml", env or {})


def test_the_token_defaults_to_the_variable_and_is_never_shown(tmp_path: Path) -> None:
    config = load(tmp_path, '[dns.cloudflare]\nzone_id = "z1"\n')
    cloudflare = config.dns.cloudflare
    assert cloudflare is not None and cloudflare.api_token is None and cloudflare.resolvers == []
    assert cloudflare.verify_timeout == timedelta(minutes=2)
    named = load(tmp_path, '[dns.cloudflare]\nzone_id = "z1"\napi_token = "${CF}"\n',
                 env={"CF": "cf-secret-token-value"})  # fmt: skip
    shown = repr(named) + str(named.display_dict())
    assert "cf-secret-token-value" not in shown


def test_exported_workflows_pass_the_token_from_github_s_secrets(tmp_path: Path) -> None:
    (tmp_path / "services" / "api").mkdir(parents=True, exist_ok=True)
    toml = tmp_path / "branchline.toml"
    toml.write_text(BASE + '[dns.cloudflare]\nzone_id = "z1"\n')
    env = github_actions.step_env(load_config(toml, env={}))
    assert env["CLOUDFLARE_API_TOKEN"] == "${{ secrets.CLOUDFLARE_API_TOKEN }}"


def test_the_zone_id_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        load(tmp_path, "[dns.cloudflare]\n")
    assert missing.value.key == "dns.cloudflare.zone_id"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.1.1.1", Resolver("1.1.1.1", 53)), ("127.0.0.1:5353", Resolver("127.0.0.1", 5353)),
     ("2606:4700::1111", Resolver("2606:4700::1111", 53)), ("[::1]:5353", Resolver("::1", 5353))],
)  # fmt: skip
def test_resolvers_are_addresses_with_an_optional_port(text: str, expected: Resolver) -> None:
    assert Resolver.parse(text) == expected
    assert Resolver.parse(str(expected)) == expected


@pytest.mark.parametrize("bad", ["dns.google", "1.1.1.1:0", "1.1.1.1:99999", "", "[::1]:x"])
def test_a_resolver_that_is_not_an_address_is_refused_with_the_key(
    tmp_path: Path, bad: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, f'[dns.cloudflare]\nzone_id = "z1"\nresolvers = ["{bad}"]\n')
    assert refused.value.key is not None and refused.value.key.startswith(
        "dns.cloudflare.resolvers"
    )


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert _retry_after(httpx.Headers({"retry-after": "7"})) == 7.0
    assert _retry_after(httpx.Headers({"retry-after": "0.25"})) == 0.25
    assert _retry_after(httpx.Headers({})) == 1.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < _retry_after(httpx.Headers({"retry-after": later})) <= 30
    assert _retry_after(httpx.Headers({"retry-after": "soon"})) == 1.0
