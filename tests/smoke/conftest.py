"""Smoke tests against real cloud accounts. The whole suite (and CI) collects them
only when their credentials are set; asked for by path without them, each one
skips and says which variables it needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CREDENTIALS = {
    "test_neon_live.py": ("NEON_API_KEY", "NEON_PROJECT_ID"),
    "test_github_live.py": ("GITHUB_TOKEN", "BRANCHLINE_GITHUB_TEST_REPO"),
    "test_cloudflare_live.py": (
        "CLOUDFLARE_API_TOKEN",
        "CLOUDFLARE_ACCOUNT_ID",
        "BRANCHLINE_CLOUDFLARE_TEST_ZONE",
    ),
}


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    needed = CREDENTIALS.get(collection_path.name)
    if needed is None or all(os.environ.get(v) for v in needed):
        return None
    asked = [Path(str(a).split("::")[0]).resolve() for a in config.args]
    return not any(a in (collection_path, HERE) for a in asked)
