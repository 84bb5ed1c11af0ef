"""Where the Workers tools are: wrangler (bundles a Worker offline), workerd (runs it)
and the Node.js wrangler runs on, all installed from the npm registry into the
project's `tools/workers/` by `npm ci` (pinned by its package-lock.json; `.ci/run`
does it). Never a global install, never a download at run time.

`BRANCHLINE_WORKERS_TOOLS` names another such directory (an installed branchline has
no checkout): one holding `node_modules/` as `npm ci` in `tools/workers/` makes it.
`branchline workers-tools install DIR` makes one (a CI runner's): the pinned
package.json and package-lock.json, shipped in the wheel, then `npm ci`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from branchline.errors import UsageError

# src/branchline/providers/compute/workertools.py -> the checkout's root
CHECKOUT_TOOLS = Path(__file__).resolve().parents[4] / "tools" / "workers"
# The wheel's copy of the pinned package files: src/branchline/tools/workers.
SHIPPED_TOOLS = Path(__file__).resolve().parents[2] / "tools" / "workers"
PINNED = ("package.json", "package-lock.json")
INSTALL_TIMEOUT = 900.0
VARIABLE = "BRANCHLINE_WORKERS_TOOLS"


class WorkersToolsMissingError(UsageError):
    """wrangler, workerd or their Node.js are not installed where branchline looks."""


@dataclass(frozen=True)
class WorkersTools:
    """The installed tools, each an absolute path."""

    root: Path  # the directory whose node_modules holds them (shown read-only to a box)
    node: Path  # Node.js >= 22.12, wrangler's minimum (npm `node-linux-*`)
    wrangler: Path  # wrangler's launcher script, run with `node`
    workerd: Path  # the workerd binary

    def wrangler_command(self, *args: str) -> list[str]:
        """`wrangler ARGS` run with the project's Node.js (never the one on PATH,
        which may be older than wrangler accepts)."""
        return [str(self.node), str(self.wrangler), *args]


def tools_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the tools are looked for: `$BRANCHLINE_WORKERS_TOOLS`, else the checkout's
    `tools/workers/`."""
    given = (os.environ if env is None else env).get(VARIABLE, "")
    return Path(given).absolute() if given else CHECKOUT_TOOLS


def find(env: Mapping[str, str] | None = None) -> WorkersTools:
    """The tools, or an error saying what is missing and the command that installs it."""
    root = tools_dir(env)
    modules = root / "node_modules"
    # The binary of this platform's package (`@cloudflare/workerd-linux-64`), not the
    # `workerd` package's launcher: that is the binary only once its install script ran,
    # and npm may be set to run none.
    native = sorted((modules / "@cloudflare").glob("workerd-*/bin/workerd"))
    wanted = {
        "node": modules / ".bin" / "node",
        "wrangler": modules / "wrangler" / "bin" / "wrangler.js",
        "workerd": native[0] if native else modules / "workerd" / "bin" / "workerd",
    }
    missing = [name for name, path in wanted.items() if not path.is_file()]
    if missing:
        where = "tools/workers" if root == CHECKOUT_TOOLS else str(root)
        raise WorkersToolsMissingError(
            f"the Workers tools are not installed ({', '.join(missing)} missing under {modules})",
            hint=f"run `(cd {where} && npm ci)`: it installs wrangler, workerd and the "
            "Node.js they need from the npm registry, as pinned by its package-lock.json "
            f"(or point {VARIABLE} at a directory where that was done)",
        )
    return WorkersTools(
        root=root, node=wanted["node"].resolve(), wrangler=wanted["wrangler"].resolve(),
        workerd=wanted["workerd"].resolve(),
    )  # fmt: skip


def pinned_files() -> Path:
    """Where the pinned package.json and package-lock.json are: the installed
    package's copy, else the checkout's."""
    for candidate in (SHIPPED_TOOLS, CHECKOUT_TOOLS):
        if all((candidate / name).is_file() for name in PINNED):
            return candidate
    raise UsageError(
        "the pinned package files of the Workers tools are missing from this branchline",
        hint="Reinstall branchline from its wheel, or run it from a checkout.",
    )


def install(directory: Path) -> tuple[WorkersTools, bool]:
    """The tools in `directory`: found there already (False), or installed now with
    `npm ci` from the pinned files (True). The registry is asked only then."""
    directory = directory.absolute()
    with_them = {VARIABLE: str(directory)}
    try:
        return find(with_them), False
    except WorkersToolsMissingError:
        pass
    npm = shutil.which("npm")
    if npm is None:
        raise UsageError(
            "installing the Workers tools needs npm, and there is none on PATH",
            hint="Install Node.js 20 or newer with npm (on GitHub's runners it is there).",
        )
    directory.mkdir(parents=True, exist_ok=True)
    source = pinned_files()
    if source != directory:
        for name in PINNED:
            shutil.copyfile(source / name, directory / name)
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=directory, capture_output=True, text=True,
        timeout=INSTALL_TIMEOUT, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise UsageError(
            f"`npm ci` of the Workers tools in {directory} failed with {done.returncode}: "
            + " / ".join(said),
            hint="Check that the npm registry is reachable, then run it again.",
        )
    return find(with_them), True
