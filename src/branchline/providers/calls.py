"""What a cloud provider's client did, counted the same way for every cloud: calls
(by route: `METHOD /template`), retries, and seconds spent waiting (on rate limits,
on operations). Benchmarks and tests read a preview's cost from it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class CallCount:
    calls: int = 0
    retries: int = 0
    waited: float = 0.0
    by_route: Counter[str] = field(default_factory=Counter)

    def called(self, route: str) -> None:
        self.calls += 1
        self.by_route[route] += 1
