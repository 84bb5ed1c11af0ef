"""Where the example app the demo copies lives.

A wheel ships it inside the package, as branchline/examples/codex (see the wheel's
build settings in pyproject.toml); a checkout (an editable install, which runs from
src/) has it at examples/codex, beside src/.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources, util
from pathlib import Path

from branchline.errors import UsageError

IN_CHECKOUT = Path(__file__).resolve().parents[3] / "examples" / "codex"


def find_example() -> Path:
    """The example app's directory: the installed package's copy, else the checkout's."""
    shipped = resources.files("branchline").joinpath("examples", "codex")
    for candidate in (shipped, IN_CHECKOUT):
        # A package imported from a zip has no directory to copy: only a real one counts.
        if isinstance(candidate, Path) and (candidate / "branchline.toml").is_file():
            return candidate
    raise UsageError(
        f"the example app the demo copies is missing: it is neither in the installed "
        f"package ({shipped}) nor in a checkout of branchline ({IN_CHECKOUT})",
        hint="Reinstall branchline from its wheel (`pip install --force-reinstall "
        "branchline`), or run the demo from a checkout (`./dev branchline demo`).",
    )


def check_tools() -> None:
    """The example's tests run `python -m pytest` and `ruff check .` with the demo's own
    Python (the example's `[security] path` puts its directory first): both must be
    there, or the first run fails minutes in with "No module named pytest"."""
    bindir = Path(sys.executable).parent
    path = os.pathsep.join([str(bindir), "/usr/local/bin", "/usr/bin", "/bin"])
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
