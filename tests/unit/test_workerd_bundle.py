"""A Worker bundle read from wrangler's outdir and the workerd config written for it
(no process: the real workerd runs in tests/integration/test_workerd.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from branchline.config import ServiceConfig
from branchline.errors import BranchlineError
from branchline.providers.compute import runtimes, workerd, workertools

WRANGLER_TOML = """\
name = "notes"
main = "src/index.ts"
compatibility_date = "2026-11-01"
compatibility_flags = ["nodejs_compat"]

[[rules]]
type = "Text"
globs = ["**/*.md5"]
"""


def outdir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    (out / "lib").mkdir(parents=True)
    (out / "index.js").write_text("export default { fetch() { return new Response('hi') } }")
    (out / "index.js.map").write_text("{}")
    (out / "README.md").write_text("written by wrangler")
    (out / "lib" / "old.cjs").write_text("module.exports = 1")
    (out / "lib" / "table.bin").write_bytes(b"\x00\x01")
    (out / "add.wasm").write_bytes(b"\x00asm")
    (out / "sum.md5").write_text("abc")
    (out / "notes.sql").write_text("SELECT 1")
    return out


def test_a_bundle_is_read_with_wranglers_module_rules(tmp_path: Path) -> None:
    (tmp_path / "wrangler.toml").write_text(WRANGLER_TOML)
    bundle = workerd.bundle_from_dir(outdir(tmp_path), tmp_path / "wrangler.toml")
    assert bundle.entry == "index.js"  # main's name, as wrangler writes it
    kinds = {name: module.kind for name, module in bundle.modules.items()}
    assert kinds == {
        "index.js": "esModule", "lib/old.cjs": "commonJsModule", "lib/table.bin": "data",
        "add.wasm": "wasm", "sum.md5": "text", "notes.sql": "text",
    }  # fmt: skip
    assert bundle.modules["lib/table.bin"].content == b"\x00\x01"
    assert bundle.compatibility_date == "2026-11-01"
    assert bundle.compatibility_flags == ("nodejs_compat",)


def test_a_jsonc_wrangler_config_with_comments_and_trailing_commas(tmp_path: Path) -> None:
    (tmp_path / "wrangler.jsonc").write_text(
        '{\n  // the Worker\n  "name": "a, // not a comment",\n  /* dated */\n'
        '  "compatibility_date": "2025-05-05",\n  "compatibility_flags": ["nodejs_compat",],\n}\n'
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "worker.js").write_text("export default {}")
    bundle = workerd.bundle_from_dir(out, tmp_path / "wrangler.jsonc")
    assert bundle.entry == "worker.js"  # no `main`: the one top-level script
    assert bundle.compatibility_flags == ("nodejs_compat",)
    assert workerd.read_wrangler_config(tmp_path / "wrangler.jsonc")["name"] == (
        "a, // not a comment"
    )


def test_what_a_bundle_cannot_be_is_explained(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.js").write_text("")
    (out / "b.js").write_text("")
    (tmp_path / "wrangler.toml").write_text('compatibility_date = "2026-01-01"\n')
    with pytest.raises(BranchlineError, match="main module"):
        workerd.bundle_from_dir(out, tmp_path / "wrangler.toml")
    (tmp_path / "wrangler.toml").write_text('main = "a.js"\n')
    with pytest.raises(BranchlineError, match="compatibility_date"):
        workerd.bundle_from_dir(out, tmp_path / "wrangler.toml")
    with pytest.raises(BranchlineError, match="cannot read the wrangler config"):
        workerd.bundle_from_dir(out, tmp_path / "wrangler.jsonc")
    module = workerd.WorkerModule("esModule", b"")
    with pytest.raises(BranchlineError, match="YYYY-MM-DD"):
        workerd.WorkerBundle("a.js", {"a.js": module}, "yesterday")


def test_the_config_names_secrets_and_holds_only_plain_vars(tmp_path: Path) -> None:
    modules = {
        "lib/x.cjs": workerd.WorkerModule("commonJsModule", b"module.exports = 2"),
        "main.js": workerd.WorkerModule("esModule", b"export default {}"),
    }
    bundle = workerd.WorkerBundle("main.js", modules, "2026-11-01", ("nodejs_compat",))
    hostile = 'a"b\\c\n); (name = "x'
    config = workerd.write_config(
        bundle, port=8799, bindings_from_env=["API_SECRET", "DATABASE_URL"],
        vars={"GREETING": hostile}, directory=tmp_path / "w",
    )  # fmt: skip
    text = config.read_text()
    assert config == tmp_path / "w" / "config.capnp"
    assert '(name = "API_SECRET", fromEnvironment = "API_SECRET")' in text
    assert '(name = "GREETING", text = "a\\"b\\\\c\\x0a); (name = \\"x")' in text
    assert 'address = "127.0.0.1:8799"' in text
    # The entry first (workerd's main module), each module in a file of its own.
    assert text.index('"main.js"') < text.index('"lib/x.cjs"')
    assert (tmp_path / "w" / "modules" / "0").read_bytes() == b"export default {}"
    assert (tmp_path / "w" / "modules" / "1").read_bytes() == b"module.exports = 2"
    assert 'allow = ["public", "private", "local"]' in text
    with pytest.raises(BranchlineError, match="given twice: GREETING"):
        workerd.write_config(bundle, port=1, bindings_from_env=["GREETING"],
                             vars={"GREETING": "x"}, directory=tmp_path / "v")  # fmt: skip


def test_the_serve_command_is_the_projects_workerd(tmp_path: Path) -> None:
    tools = workertools.WorkersTools(
        root=tmp_path, node=tmp_path / "node", wrangler=tmp_path / "wrangler.js",
        workerd=tmp_path / "workerd",
    )  # fmt: skip
    argv = workerd.serve_command(tmp_path / "config.capnp", tools)
    assert argv[:4] == [str(tmp_path / "workerd"), "serve", str(tmp_path / "config.capnp"),
                        workerd.CONST]  # fmt: skip
    assert tools.wrangler_command("deploy") == [
        str(tmp_path / "node"),
        str(tmp_path / "wrangler.js"),
        "deploy",
    ]


def test_a_wrangler_configs_vars_are_plain_text(tmp_path: Path) -> None:
    config = tmp_path / "wrangler.toml"
    config.write_text(WRANGLER_TOML + '\n[vars]\nSOURCE = "wrangler"\n')
    assert workerd.vars_of(config) == {"SOURCE": "wrangler"}
    config.write_text(WRANGLER_TOML + "\n[vars]\nLIMITS = { max = 3 }\n")
    with pytest.raises(BranchlineError, match=r"`vars\.LIMITS` in wrangler\.toml is not a string"):
        workerd.vars_of(config)


def test_a_bundle_or_config_reaching_out_through_a_link_is_refused(tmp_path: Path) -> None:
    # The outdir and the release are written by untrusted code; branchline reads them
    # outside its sandbox, where a link could lead to its own secret key.
    secret = tmp_path / "secret.key"
    secret.write_text("key material")
    (tmp_path / "wrangler.toml").write_text(WRANGLER_TOML)
    out = outdir(tmp_path)
    (out / "lib" / "stolen.txt").symlink_to(secret)
    with pytest.raises(BranchlineError, match=r"symbolic link, lib/stolen\.txt"):
        workerd.bundle_from_dir(out, tmp_path / "wrangler.toml")
    (out / "lib" / "stolen.txt").unlink()
    (out / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(BranchlineError, match="symbolic link, elsewhere"):
        workerd.bundle_from_dir(out, tmp_path / "wrangler.toml")
    (out / "elsewhere").unlink()
    linked = tmp_path / "linked.toml"
    linked.symlink_to(tmp_path / "wrangler.toml")
    with pytest.raises(BranchlineError, match="cannot read the wrangler config"):
        workerd.bundle_from_dir(out, linked)


def test_a_worker_release_whose_directory_leads_out_is_refused(tmp_path: Path) -> None:
    spec = ServiceConfig.model_validate(
        {"path": "services/notes", "runtime": "worker", "subdomain": "notes"}
    )
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "wrangler.toml").write_text(WRANGLER_TOML)
    release = tmp_path / "release"
    (release / "tree" / "services").mkdir(parents=True)
    (release / "tree" / "services" / "notes").symlink_to(outside, target_is_directory=True)
    tools = workertools.WorkersTools(tmp_path, tmp_path / "node", tmp_path / "w", tmp_path / "wd")
    with pytest.raises(BranchlineError, match="leads out of the release"):
        runtimes.WorkerRuntime(tools).launch(
            spec, release, facts={}, env={}, own=[], port=1, workdir=tmp_path / "work"
        )
