"""The example apps the demo can copy, and all that differs between them: what a
sync changes, what "broken" breaks, what their tests and services need installed,
which variables their branchline.toml refers to. The story (`scenario`) is the same
for each.

- `codex`: three Python services (web, auth, api) on psycopg 3, tested with pytest
  and ruff (the default);
- `workers`: the same shape as three Cloudflare Workers in JavaScript (node-postgres
  under `nodejs_compat`), bundled by wrangler and served by workerd, tested with
  Node's test runner.

A wheel ships each inside the package, as branchline/examples/<name> (see the wheel's
build settings in pyproject.toml); a checkout (an editable install, which runs from
src/) has it at examples/<name>, beside src/.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources, util
from pathlib import Path

from branchline.errors import UsageError
from branchline.providers.compute import workertools

EXAMPLES_IN_CHECKOUT = Path(__file__).resolve().parents[3] / "examples"
# Where the examples' boxed code finds its tools (their `[security] path`, the demo's
# interpreter first for codex).
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")


@dataclass(frozen=True)
class Change:
    """A change the demo commits to its copy of the example, with `message`: `path`
    written with `text`; with `before`, `text` inserted before the first `before` in
    the file instead (an error when the file has none: the example changed, not the
    story)."""

    message: str
    path: str
    text: str
    before: str | None = None

    def apply(self, root: Path) -> None:
        target = root / self.path
        if self.before is None:
            target.write_text(self.text)
            return
        original = target.read_text()
        if self.before not in original:
            raise UsageError(
                f"the demo cannot change {self.path}: it has no {self.before.strip()!r}",
                hint="The example app changed: update its Change in branchline/demo/example.py.",
            )
        target.write_text(original.replace(self.before, self.text + self.before, 1))


@dataclass(frozen=True)
class Example:
    """One example app, as the demo plays it."""

    name: str  # its directory under examples/, and the copy's
    what: str  # one line: what it is
    sync: Change  # phase 3: a migration the new commit brings to the preview
    broken: Change  # phase 5: what makes web fail its health check in production only
    # Tools its tests, builds and services need: raises, saying how to install them.
    check: Callable[[], None]
    # The variables its branchline.toml refers to, with the values the demo sets.
    variables: Callable[[], dict[str, str]] = field(default=lambda: {})

    def find(self) -> Path:
        """Its directory: the installed package's copy, else the checkout's."""
        shipped = resources.files("branchline").joinpath("examples", self.name)
        in_checkout = EXAMPLES_IN_CHECKOUT / self.name
        for candidate in (shipped, in_checkout):
            # A package imported from a zip has no directory to copy: only a real one counts.
            if isinstance(candidate, Path) and (candidate / "branchline.toml").is_file():
                return candidate
        raise UsageError(
            f"the example app the demo copies is missing: it is neither in the installed "
            f"package ({shipped}) nor in a checkout of branchline ({in_checkout})",
            hint="Reinstall branchline from its wheel (`pip install --force-reinstall "
            "branchline`), or run the demo from a checkout (`./dev branchline demo`).",
        )


# The same migration for both: their api owns `products`.
PRODUCT_NOTES = Change(
    "products get a note",
    "migrations/003_product_notes.sql",
    "ALTER TABLE products ADD COLUMN note text;\n",
)


def check_tools() -> None:
    """The example's tests run `python -m pytest` and `ruff check .` with the demo's own
    Python (the example's `[security] path` puts its directory first): both must be
    there, or the first run fails minutes in with "No module named pytest"."""
    bindir = Path(sys.executable).parent
    path = os.pathsep.join([str(bindir), *SYSTEM_PATH])
    missing = [name for name, found in (
        ("pytest", util.find_spec("pytest") is not None),
        ("ruff", shutil.which("ruff", path=path) is not None),
    ) if not found]  # fmt: skip
    if missing:
        raise UsageError(
            f"the demo tests its example app with pytest and ruff, and "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
            f"beside branchline (for {sys.executable})",
            hint="Install them into branchline's environment: "
            "`pip install 'branchline[demo]'` (or `pip install pytest ruff`).",
        )


def check_workers_tools() -> None:
    """wrangler and workerd (the Workers tools) bundle and serve the workers example;
    npm and node on its `[security] path` install its dependencies, migrate it and run
    its tests. Missing: said now, with the command that installs them, not minutes in."""
    workertools.find()  # WorkersToolsMissingError, with its hint
    path = os.pathsep.join(SYSTEM_PATH)
    missing = [name for name in ("npm", "node") if shutil.which(name, path=path) is None]
    if missing:
        raise UsageError(
            f"the workers example installs its dependencies, migrates and tests with npm "
            f"and node, and {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            f"not in {', '.join(SYSTEM_PATH)}",
            hint="Install them (Debian/Ubuntu: `apt-get install npm`).",
        )


CODEX = Example(
    name="codex",
    what="three Python services (web, auth, api) on Postgres",
    sync=PRODUCT_NOTES,
    # Refuses to start where a setting it needs is missing: only production.
    broken=Change(
        "web: needs a currency setting",
        "services/web/app.py",
        "\n# A release that starts everywhere but in production, where a setting it needs is\n"
        "# missing: the tests pass, the production health check does not.\n"
        'if os.environ.get("BRANCHLINE_ENVIRONMENT") == "production":\n'
        '    raise SystemExit("web: refusing to start: SHOP_CURRENCY is not configured")\n',
        before="\nfrom common",
    ),
    check=check_tools,
    # Every process it starts (tests, migrations, services) runs `python`: the demo's
    # interpreter, which has psycopg; the example's `[security] path` names it.
    variables=lambda: {"CODEX_PYTHON_BIN": str(Path(sys.executable).parent)},
)

WORKERS = Example(
    name="workers",
    what="three Cloudflare Workers (web, auth, api) on Postgres, run locally in workerd",
    sync=PRODUCT_NOTES,
    # Serves everywhere, but answers 500 in production, where a setting is missing.
    broken=Change(
        "web: needs a currency setting",
        "services/web/src/index.js",
        "    // A release that serves everywhere but in production, where a setting it needs\n"
        "    // is missing: the tests pass, the production health check does not.\n"
        '    if (env.BRANCHLINE_ENVIRONMENT === "production" && !env.SHOP_CURRENCY) {\n'
        '      return Response.json({ error: "SHOP_CURRENCY is not configured" }, '
        "{ status: 500 });\n"
        "    }\n",
        before="    const url = new URL(request.url);\n",
    ),
    check=check_workers_tools,
)

EXAMPLES = {example.name: example for example in (CODEX, WORKERS)}
