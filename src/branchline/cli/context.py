"""What every command shares: output settings, the project it works on, and the
one way a command runs its work (`AppContext.run`): the state database started,
a `Kit` of the project's providers built (with the running edge's ports, or the
edge started when the command needs it), optionally the engine, and everything
closed afterwards."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from branchline.cli.output import Output

# Every command module imports this one: what it needs is imported where it is used,
# so that `--help` and light commands do not load Postgres, the engine and the providers.
if TYPE_CHECKING:
    from branchline.config import Config
    from branchline.engine.engine import Engine, EngineOptions
    from branchline.kit import Kit
    from branchline.store import Store

T = TypeVar("T")


@dataclass
class Session:
    """What a command's work receives."""

    app: AppContext
    kit: Kit
    engine: Engine | None = None

    @property
    def config(self) -> Config:
        return self.kit.config

    @property
    def store(self) -> Store:
        return self.kit.store

    @property
    def output(self) -> Output:
        return self.app.output

    def need_engine(self) -> Engine:
        assert self.engine is not None, "this command runs with engine=True"
        return self.engine


@dataclass
class AppContext:
    output: Output = field(default_factory=Output)
    config_path: Path | None = None
    _config: Config | None = None
    _store: Store | None = None

    def config(self) -> Config:
        """The project's config: --config / BRANCHLINE_CONFIG, else found from the cwd."""
        if self._config is None:
            from branchline.config import find_config, load_config

            path = self.config_path or find_config(Path.cwd())
            self._config = load_config(path)
        return self._config

    def store(self) -> Store:
        """The state database. Refused while git tracks branchline's state directory."""
        if self._store is None:
            from branchline import gitguard
            from branchline.store import Store, locate_state

            config = self.config()
            location = locate_state(config.root, os.environ)
            gitguard.refuse_if_tracked(location.state_dir, config.root)
            self._store = Store(location)
        return self._store

    def run(
        self,
        work: Callable[[Session], Awaitable[T]],
        *,
        edge: bool = False,
        engine: EngineOptions | bool = False,
        show: Callable[[T], None] | None = None,
    ) -> T:
        """Run `work` with a session. `edge`: start the edge in the background when it
        does not run (deploys must be reachable); `engine`: open the engine (runs,
        cancels); `show`: print the result as soon as it is there, before the
        providers finish their background work (such as preparing the next branch)."""
        import asyncio

        config = self.config()
        store = self.store()

        async def main() -> T:
            await store.start()
            async with self.session(config, store, edge=edge, engine=engine) as session:
                result = await work(session)
                if show is not None:
                    show(result)
                return result

        return asyncio.run(main())

    @contextlib.asynccontextmanager
    async def session(
        self, config: Config, store: Store, *, edge: bool, engine: EngineOptions | bool
    ) -> AsyncIterator[Session]:
        import asyncio

        from branchline.edge import daemon
        from branchline.kit import Kit

        info: daemon.EdgeInfo | None
        if edge:
            before = daemon.read_info(store.location.state_dir)
            running, started = await asyncio.to_thread(
                daemon.ensure_running, store.location.state_dir, config.path
            )
            if started:
                self.output.notice(daemon.describe_start(running, resumed=before is not None))
            info = running
        else:
            info = daemon.read_info(store.location.state_dir)
        kit = Kit.build(
            config, store, edge_port=info.edge_port if info else None,
            dns_port=info.dns_port if info else None, edge_bind=info.edge_bind if info else None,
        )  # fmt: skip
        try:
            if engine is False:
                yield Session(self, kit)
            else:
                from branchline.engine.engine import Engine, EngineOptions  # the job queue

                options = engine if isinstance(engine, EngineOptions) else None
                opened = Engine(store, project=config.project.name, options=options)
                async with opened.open():
                    yield Session(self, kit, opened)
        finally:
            await kit.aclose()


def app_context(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    if not isinstance(obj, AppContext):
        obj = AppContext()
        ctx.find_root().obj = obj
    return obj
