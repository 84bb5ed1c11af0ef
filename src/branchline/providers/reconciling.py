"""What a provider found when it compared what it owns with what its records say,
and the capability of doing so (`reconcile` asks every provider that has it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass
class Finding:
    """One difference: what it is, what was (or would be) done, and why."""

    kind: str  # preview, deployment, process, route, branch, job
    target: str
    action: str
    reason: str
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "action": self.action,
                "reason": self.reason, "done": self.done}  # fmt: skip

    def describe(self) -> str:
        verb = self.action if self.done else f"would {self.action}"
        return f"{self.kind} {self.target}: {verb} ({self.reason})"


@runtime_checkable
class Reconcilable(Protocol):
    async def reconcile(self, *, dry_run: bool = False) -> list[Finding]:
        """Finish or undo what a crash left of this provider's own work (and say
        what would be done, with `dry_run`)."""
        ...
