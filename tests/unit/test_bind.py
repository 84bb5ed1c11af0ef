"""Where serve listens: --bind and --api-bind over `[edge] bind` and `[server] bind`,
the warning for an HTTP server reachable from other machines without its secrets,
and an address this machine does not have."""

from __future__ import annotations

from pathlib import Path

import pytest

from branchline.cli.serve import exposure_warning, resolve_ports
from branchline.config import Config
from branchline.edge import daemon
from branchline.errors import UsageError
from tests.unit.test_config import BASE, load

TOKEN = 'metrics_token = "0123456789abcdef0123"\n'
SECRET = '[forge.github]\nwebhook_secret = "a webhook secret"\n'

EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 (what is checked here)


def config(tmp_path: Path, extra: str = "") -> Config:
    return load(tmp_path, BASE + "\n" + extra)


def test_bind_moves_every_listener_and_api_bind_the_http_server_alone(tmp_path: Path) -> None:
    configured = config(tmp_path, '[edge]\nbind = "::1"\n[server]\nbind = "0.0.0.0"\n')
    kept = resolve_ports(configured, None, None, None)
    assert (kept.edge_bind, kept.api_bind) == ("::1", EVERY_INTERFACE)
    both = resolve_ports(configured, None, None, None, "192.0.2.7")
    assert (both.edge_bind, both.api_bind) == ("192.0.2.7", "192.0.2.7")
    split = resolve_ports(configured, None, None, None, "127.0.0.1", "0:0::0")
    assert (split.edge_bind, split.api_bind) == ("127.0.0.1", "::")


@pytest.mark.parametrize("flag", ["--bind", "--api-bind"])
def test_a_flag_that_is_no_ip_address_says_what_to_give(tmp_path: Path, flag: str) -> None:
    with pytest.raises(UsageError) as caught:
        kwargs = {"bind": "example.com"} if flag == "--bind" else {"api_bind": "example.com"}
        resolve_ports(config(tmp_path), None, None, None, **kwargs)
    assert str(caught.value).startswith(f"{flag}: `example.com` is not an IP address")
    assert f"`{flag} 0.0.0.0`" in caught.value.hint


def test_an_http_server_beyond_loopback_without_its_secrets_is_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BRANCHLINE_WEBHOOK_SECRET", raising=False)
    bare = config(tmp_path)
    said = exposure_warning(bare, resolve_ports(bare, None, None, None, EVERY_INTERFACE))
    assert said is not None and said.startswith("warning: the HTTP server listens on 0.0.0.0")
    assert "metrics_token" in said and "/metrics" in said and "openssl rand" in said
    assert "no webhook secret" in said and "webhook_secret" in said
    assert "\n" not in said

    monkeypatch.setenv("BRANCHLINE_WEBHOOK_SECRET", "from the environment")
    said = exposure_warning(bare, resolve_ports(bare, None, None, None, None, "192.0.2.7"))
    assert said is not None and "metrics_token" in said and "webhook secret" not in said

    guarded = config(tmp_path, "[server]\n" + TOKEN)
    assert exposure_warning(guarded, resolve_ports(guarded, None, None, None, "::")) is None
    monkeypatch.delenv("BRANCHLINE_WEBHOOK_SECRET")
    said = exposure_warning(guarded, resolve_ports(guarded, None, None, None, "::"))
    assert said is not None and "no webhook secret" in said and "metrics_token" not in said


def test_loopback_or_no_http_server_is_not_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BRANCHLINE_WEBHOOK_SECRET", raising=False)
    bare = config(tmp_path)
    for bind in (None, "127.0.0.1", "::1", "127.0.0.2"):
        assert exposure_warning(bare, resolve_ports(bare, None, None, None, bind)) is None
    # Only the edge faces other machines: the HTTP server (webhooks, /metrics) does not.
    edge_only = resolve_ports(bare, None, None, None, EVERY_INTERFACE, "127.0.0.1")
    assert exposure_warning(bare, edge_only) is None
    assert exposure_warning(bare, resolve_ports(bare, None, None, 0, EVERY_INTERFACE)) is None


def test_an_address_this_machine_lacks_is_named_with_the_key_that_sets_it() -> None:
    # 203.0.113.0/24 is for documentation: no machine has it.
    for which, key, flag in (("edge", "[edge] bind", "--bind"),
                             ("api", "[server] bind", "--api-bind")):  # fmt: skip
        with pytest.raises(UsageError) as caught:
            daemon.check_port(0, which, "203.0.113.9")
        assert "cannot listen on 203.0.113.9" in str(caught.value)
        assert "no such address" in str(caught.value)
        assert key in caught.value.hint and flag in caught.value.hint
