"""The Workers tools (wrangler, workerd, their Node.js) for the tests that run a
Worker for real. Missing: a failure under CI (`.ci/run` installs them), else a skip
saying why and how to install them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from branchline.errors import BranchlineError
from branchline.providers.compute import workertools

NOTES_WORKER = Path(__file__).resolve().parent / "apps" / "notes_worker"


def required() -> workertools.WorkersTools:
    """The tools, or the test stops: failed under CI, skipped elsewhere."""
    try:
        found = workertools.find()
        if shutil.which("npm") is None:  # the test Worker's own `npm ci`
            raise BranchlineError("npm is not on PATH", hint="apt-get install npm")
    except BranchlineError as missing:
        why = f"{missing.message}: {missing.hint}"
        if os.environ.get("CI", "") not in ("", "0"):
            pytest.fail(why)
        pytest.skip(why)
    return found
