"""Where the Workers tools are: wrangler (bundles a Worker offline), workerd (runs it)
and the Node.js wrangler runs on, all installed from the npm registry into the
project's `tools/workers/` by `npm ci` (pinned by its package-lock.json; `.ci/run`
does it). Never a global install, never a download at run time.

`BRANCHLINE_WORKERS_TOOLS` names another such directory (an installed branchline has
no checkout): one holding `node_modules/` as `npm ci` in `tools/workers/` makes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from branchline.errors import UsageError

# src/branchline/providers/compute/workertools.py -> the checkout's root
CHECKOUT_TOOLS = Path(__file__).resolve().parents[4] / "tools" / "workers"
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
