"""What every command shares: output settings and the project it works on."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import typer

from branchline.cli.output import Output
from branchline.config import Config, find_config, load_config
from branchline.store import Store, locate_state


@dataclass
class AppContext:
    output: Output = field(default_factory=Output)
    config_path: Path | None = None
    _config: Config | None = None

    def config(self) -> Config:
        """The project's config: --config / BRANCHLINE_CONFIG, else found from the cwd."""
        if self._config is None:
            path = self.config_path or find_config(Path.cwd())
            self._config = load_config(path)
        return self._config

    def store(self) -> Store:
        return Store(locate_state(self.config().root, os.environ))


def app_context(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    if not isinstance(obj, AppContext):
        obj = AppContext()
        ctx.find_root().obj = obj
    return obj
