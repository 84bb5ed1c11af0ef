"""Every pipeline's actions under the names their steps call, bound to a kit:
what the engine runs. The one module that knows all pipelines (none imports it)."""

from __future__ import annotations

from typing import Any

from branchline.engine.runner import Action, StepContext
from branchline.kit import Kit
from branchline.pipelines import actions, cleanup, preview, production, testing

TABLES = (actions.SHARED, testing.ACTIONS, preview.ACTIONS, cleanup.ACTIONS, production.ACTIONS)


def bound(kit: Kit) -> dict[str, Action]:
    """Every action, bound to `kit`. A name defined twice is a bug: refused."""
    table: dict[str, actions.KitAction] = {}
    for part in TABLES:
        clash = set(table) & set(part)
        if clash:
            raise RuntimeError(f"actions defined twice: {sorted(clash)}")
        table.update(part)
    return {name: _for_run(kit, action) for name, action in table.items()}


def _for_run(kit: Kit, action: actions.KitAction) -> Action:
    """`action` given the kit of its run: with the config of the run's commit."""

    async def call(ctx: StepContext, *args: Any, **kwargs: Any) -> Any:
        return await action(await kit.for_run(ctx.sha, ctx.pr), ctx, *args, **kwargs)

    return call
