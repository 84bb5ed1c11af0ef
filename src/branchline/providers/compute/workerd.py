"""Running a Worker bundle in workerd, Cloudflare's open-source Workers runtime.

One concern: a bundle (what `wrangler deploy --dry-run --outdir DIR` writes, or what
an upload to Cloudflare's API carries) served by workerd on a loopback port. Used by
local compute for `runtime = "worker"` services and by the fake Cloudflare API for
uploaded scripts:

    bundle = bundle_from_dir(outdir, service_dir / "wrangler.toml")
    config = write_config(bundle, port=8787, bindings_from_env=["API_KEY"],
                          vars=vars_of(service_dir / "wrangler.toml"), directory=somewhere)
    argv = serve_command(config)   # start it with API_KEY in its environment

Bindings: `vars` are written into the config as plain text; every name in
`bindings_from_env` is a `fromEnvironment` binding, read by workerd from its own
environment when it starts (null when unset). Secrets go that way, so that no file
holds them: the config names them only.

Outbound: the Worker's `fetch()` and TCP sockets (`connect()`, which node-postgres
uses under `nodejs_compat`) go through a network service that allows public,
private and local addresses. workerd's built-in `internet` service allows only public
ones; a Worker run locally must reach its local Postgres.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from branchline.errors import BranchlineError
from branchline.providers.compute import workertools

ModuleKind = Literal["esModule", "commonJsModule", "text", "data", "wasm", "json"]
MODULE_KINDS: tuple[ModuleKind, ...] = ("esModule", "commonJsModule", "text", "data", "wasm",
                                        "json")  # fmt: skip
# The content types of a module part in an upload to Cloudflare's Workers API.
KIND_BY_CONTENT_TYPE: Mapping[str, ModuleKind] = {
    "application/javascript+module": "esModule",
    "text/javascript+module": "esModule",
    "application/javascript": "commonJsModule",
    "text/javascript": "commonJsModule",
    "text/plain": "text",
    "application/octet-stream": "data",
    "application/wasm": "wasm",
    "application/json": "json",
}
# wrangler's module types (its `rules`) as workerd's.
_WRANGLER_TYPES: Mapping[str, ModuleKind] = {
    "ESModule": "esModule", "CommonJS": "commonJsModule", "Text": "text", "Data": "data",
    "CompiledWasm": "wasm",
}  # fmt: skip
# wrangler's default rules, after the ones a config adds (first match wins).
_DEFAULT_RULES: tuple[tuple[ModuleKind, tuple[str, ...]], ...] = (
    ("esModule", ("**/*.js", "**/*.mjs")),
    ("commonJsModule", ("**/*.cjs",)),
    ("text", ("**/*.txt", "**/*.html", "**/*.sql")),
    ("data", ("**/*.bin",)),
    ("wasm", ("**/*.wasm", "**/*.wasm?module")),
)
# What wrangler writes into an outdir beside the modules.
_NOT_MODULES = ("README.md", "*.map")
CONST = "config"  # the name of the Config constant in the files write_config makes


@dataclass(frozen=True)
class WorkerModule:
    kind: ModuleKind
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class WorkerBundle:
    """A Worker ready to run: its modules (name -> kind and bytes; `entry` is the main
    one) and the compatibility date and flags that decide the runtime's behaviour."""

    entry: str
    modules: Mapping[str, WorkerModule]
    compatibility_date: str
    compatibility_flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.entry not in self.modules:
            raise BranchlineError(
                f"the Worker's main module {self.entry!r} is not among its modules "
                f"({', '.join(sorted(self.modules)) or 'none'})",
                hint="Name the module the bundle's entry point is in.",
            )
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", self.compatibility_date):
            raise BranchlineError(
                f"compatibility date {self.compatibility_date!r} is not YYYY-MM-DD",
                hint='Set `compatibility_date = "2025-01-01"` (say) in the wrangler config.',
            )


def read_wrangler_config(path: Path) -> dict[str, Any]:
    """A wrangler config (`wrangler.toml`, `wrangler.json` or `wrangler.jsonc`) as data.
    Never through a symbolic link (see `_read_regular`)."""
    try:
        text = _read_regular(path).decode("utf-8", errors="replace")
    except OSError as exc:
        raise BranchlineError(
            f"cannot read the wrangler config {path}: {exc.strerror}",
            hint="A worker service's directory holds its wrangler.toml or wrangler.jsonc.",
        ) from None
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        loaded = json.loads(_strip_jsonc(text))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise BranchlineError(
            f"the wrangler config {path} is not valid: {exc}",
            hint="Check it with `wrangler deploy --dry-run`.",
        ) from None
    if not isinstance(loaded, dict):
        raise BranchlineError(f"the wrangler config {path} is not an object")
    return loaded


def vars_of(wrangler_config: Path) -> dict[str, str]:
    """The plain-text variables a wrangler config declares (`[vars]`), which wrangler
    uploads as plain-text bindings. Only strings: a JSON value is refused, said so."""
    declared = read_wrangler_config(wrangler_config).get("vars") or {}
    found: dict[str, str] = {}
    for name, value in dict(declared).items():
        if not isinstance(value, str):
            raise BranchlineError(
                f"`vars.{name}` in {wrangler_config.name} is not a string",
                hint="Locally, a Worker's `[vars]` are plain text: write the value as a "
                "string (JSON.parse it in the Worker).",
            )
        found[str(name)] = value
    return found


def bundle_from_dir(path: Path, wrangler_config: Path) -> WorkerBundle:
    """The bundle wrangler wrote into `path` (`wrangler deploy --dry-run --outdir
    PATH`), with the compatibility date and flags of `wrangler_config`. Module kinds
    follow wrangler's rules (the config's `rules` first, then its defaults)."""
    config = read_wrangler_config(wrangler_config)
    date = config.get("compatibility_date")
    if not isinstance(date, str):
        raise BranchlineError(
            f"{wrangler_config} sets no `compatibility_date`",
            hint='Add `compatibility_date = "YYYY-MM-DD"`: workerd needs one, as Cloudflare does.',
        )
    flags = config.get("compatibility_flags") or []
    rules = _rules(config.get("rules") or [])
    modules: dict[str, WorkerModule] = {}
    for file in _files_in(path):
        name = file.relative_to(path).as_posix()
        if any(fnmatch.fnmatch(file.name, pattern) for pattern in _NOT_MODULES):
            continue
        kind = _kind_of(name, rules)
        if kind is not None:
            modules[name] = WorkerModule(kind, _read_regular(file))
    main = config.get("main")
    entry = PurePosixPath(str(main)).with_suffix(".js").name if main else ""
    if entry not in modules:
        scripts = [n for n, m in modules.items() if m.kind == "esModule" and "/" not in n]
        if len(scripts) != 1:
            raise BranchlineError(
                f"cannot tell the main module of the bundle in {path}",
                hint="Set `main` in the wrangler config, and build with "
                "`wrangler deploy --dry-run --outdir DIR`.",
            )
        entry = scripts[0]
    return WorkerBundle(entry, modules, date, tuple(str(f) for f in flags))


def write_config(
    bundle: WorkerBundle,
    *,
    port: int,
    bindings_from_env: Sequence[str],
    vars: Mapping[str, str],  # wrangler's and Cloudflare's word for them
    directory: Path,
) -> Path:
    """Write `bundle`'s modules and a workerd config serving it on 127.0.0.1:`port`
    into `directory` (made if missing); returns the config's path. Plain-text bindings
    for `vars`; `fromEnvironment` for the names in `bindings_from_env` (their values
    are in no file). A module's file is `modules/<n>`: its name, whatever it is, is
    only a string in the config."""
    overlap = sorted(set(vars) & set(bindings_from_env))
    if overlap:
        raise BranchlineError(f"bindings given twice: {', '.join(overlap)}")
    modules_dir = directory / "modules"
    modules_dir.mkdir(parents=True, exist_ok=True)
    # The main module first: workerd takes the first as the entry point.
    ordered = [bundle.entry, *(n for n in bundle.modules if n != bundle.entry)]
    entries = []
    for number, name in enumerate(ordered):
        module = bundle.modules[name]
        (modules_dir / str(number)).write_bytes(module.content)
        entries.append(f'(name = {_text(name)}, {module.kind} = embed "modules/{number}")')
    bindings = [f"(name = {_text(k)}, text = {_text(v)})" for k, v in sorted(vars.items())]
    bindings += [f"(name = {_text(k)}, fromEnvironment = {_text(k)})"
                 for k in sorted(bindings_from_env)]  # fmt: skip
    flags = ", ".join(_text(f) for f in bundle.compatibility_flags)
    config = f"""\
# Written by branchline: serves one Worker bundle on 127.0.0.1:{port}.
using Workerd = import "/workerd/workerd.capnp";

const {CONST} :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    # Outbound fetch() and connect(): local and private addresses too (its Postgres).
    (name = "outbound", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (), service = "main")],
);

const worker :Workerd.Worker = (
  modules = [
    {_joined(entries)}
  ],
  compatibilityDate = {_text(bundle.compatibility_date)},
  compatibilityFlags = [{flags}],
  bindings = [
    {_joined(bindings)}
  ],
  globalOutbound = "outbound",
);
"""
    path = directory / "config.capnp"
    path.write_text(config, encoding="utf-8")
    return path


def serve_command(config_path: Path, tools: workertools.WorkersTools | None = None) -> list[str]:
    """The argv that serves the config `write_config` wrote, until SIGTERM. `--verbose`:
    a Worker's uncaught exceptions and console output go to the log."""
    found = tools or workertools.find()
    return [str(found.workerd), "serve", str(config_path), CONST, "--verbose"]


# -- internals ------------------------------------------------------------------------


def _files_in(path: Path) -> list[Path]:
    """The files under `path`, refusing any symbolic link: the directory was written by
    untrusted code (a build), and a link would make branchline, reading it outside the
    sandbox, copy a file of its own (its secret key) into the Worker's reach."""
    found = []
    for top, dirs, files in os.walk(path, followlinks=False):
        for name in (*dirs, *files):
            entry = Path(top) / name
            if entry.is_symlink():
                raise BranchlineError(
                    f"the Worker's bundle holds a symbolic link, {entry.relative_to(path)}: "
                    "refused",
                    hint="wrangler writes none; the build must not make one in its --outdir.",
                )
        found += [Path(top) / name for name in files]
    return sorted(found)


def _read_regular(path: Path) -> bytes:
    """A regular file's bytes; a symbolic link (as the last part) is refused by the OS."""
    handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(handle, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return file.read()


def _rules(configured: Sequence[Any]) -> list[tuple[ModuleKind, tuple[str, ...]]]:
    """A wrangler config's `rules` (type and globs), then the defaults."""
    rules: list[tuple[ModuleKind, tuple[str, ...]]] = []
    for rule in configured:
        kind = _WRANGLER_TYPES.get(str(rule.get("type"))) if isinstance(rule, dict) else None
        if kind is not None:
            rules.append((kind, tuple(str(g) for g in rule.get("globs") or ())))
    return [*rules, *_DEFAULT_RULES]


def _kind_of(name: str, rules: Sequence[tuple[ModuleKind, tuple[str, ...]]]) -> ModuleKind | None:
    for kind, globs in rules:
        # `**/*.js` matches at the top too (fnmatch's `*` crosses `/`).
        if any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(name, g.removeprefix("**/"))
               for g in globs):  # fmt: skip
            return kind
    return None


def _text(value: str) -> str:
    """A Cap'n Proto text literal: quotes, backslashes and control characters escaped
    byte by byte, so no value can end the string early."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif byte < 0x20 or byte == 0x7F:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(char if byte < 0x80 else f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def _joined(items: Sequence[str]) -> str:
    return ",\n    ".join(items)


def _strip_jsonc(text: str) -> str:
    """JSON with comments and trailing commas (wrangler.jsonc) as plain JSON; what is
    inside strings is left as it is."""
    without_comments = _TOKENS.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else "", text)
    return _TOKENS_COMMAS.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else m.group(1),
                              without_comments)  # fmt: skip


_STRING = r'"(?:\\.|[^"\\])*"'
_TOKENS = re.compile(_STRING + r"|//[^\n]*|/\*.*?\*/", re.DOTALL)
_TOKENS_COMMAS = re.compile(_STRING + r"|,(\s*[}\]])")
