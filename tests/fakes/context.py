"""A StepContext for calling pipeline actions directly: it keeps the log lines, the
artifacts published, and the jobs a test says the run has."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from branchline.engine.engine import ArtifactMissingError
from branchline.engine.runner import JobOutcome


@dataclass
class FakeStepContext:
    run_id: int = 1
    project: str = "codex"
    workflow: str = "preview"
    triggered_by: str = "a test"
    sha: str | None = None
    ref: str | None = None
    pr: int | None = None
    repo: Path | None = None
    secrets: Mapping[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)  # name (or name@sha) -> value
    job_outcomes: list[JobOutcome] = field(default_factory=list)

    async def log(self, line: str) -> None:
        self.lines.append(line)

    async def publish(
        self, name: str, value: str, *, sensitive: bool = False, days: float = 7
    ) -> None:
        self.artifacts[name] = value
        if self.sha:
            self.artifacts[f"{name}@{self.sha}"] = value

    async def artifact(
        self, name: str, *, workflow: str | None = None, sha: str | None = None
    ) -> str:
        found = self.artifacts.get(f"{name}@{sha}" if sha else name)
        if found is None:
            raise ArtifactMissingError(f"no artifact {name!r}")
        return found

    async def jobs(self) -> list[JobOutcome]:
        return list(self.job_outcomes)
