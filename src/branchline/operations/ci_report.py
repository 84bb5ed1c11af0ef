"""What `branchline ci` tells GitHub: `::add-mask::` commands for secret values, and
the job summary (markdown appended to GITHUB_STEP_SUMMARY)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from branchline.masking import MIN_SECRET_LENGTH, by_line
from branchline.operations.ci import Outcome

_MARK = {"success": "✅", "failure": "❌", "cancelled": "⏹️", "skipped": "⏭️"}


def mask_commands(value: str) -> list[str]:
    """The `::add-mask::` lines hiding `value` in the job's log: the value, each of its
    lines (GitHub masks line by line), and a connection URI's password on its own."""
    pieces = by_line([value])
    if "://" in value:
        with contextlib.suppress(Exception):
            password = conninfo_to_dict(value).get("password")
            if password:
                pieces.append(str(password))
    seen: list[str] = []
    for piece in pieces:
        if "\n" not in piece and len(piece) >= MIN_SECRET_LENGTH and piece not in seen:
            seen.append(piece)
    return [f"::add-mask::{_escaped(piece)}" for piece in seen]


def _escaped(data: str) -> str:
    # A workflow command's data is escaped so: GitHub unescapes it before masking.
    return data.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _cell(text: str) -> str:
    """Text from a run in a markdown table cell: on one line, no column breaks."""
    return " ".join(text.split()).replace("|", "\\|")[:200]


def markdown(outcome: Outcome) -> str:
    """The job summary: the pipeline's result, its commit, each job with its result
    and duration, and the preview's addresses."""
    mark = _MARK.get(outcome.status, "")
    lines = [f"## branchline {outcome.pipeline}: {mark} {outcome.status}".replace("  ", " "), ""]
    about = []
    if outcome.sha:
        about.append(f"commit `{outcome.sha[:12]}`")
    if outcome.pr is not None:
        about.append(f"pull request #{outcome.pr}")
    elif outcome.ref:
        about.append(f"branch `{_cell(outcome.ref)}`")
    if outcome.run_id is not None:
        about.append(f"branchline run {outcome.run_id} (`branchline runs show {outcome.run_id}`)")
    if about:
        lines += [", ".join(about), ""]
    if outcome.reason:
        lines += [_cell(outcome.reason), ""]
    if outcome.jobs:
        lines += ["| job | result | duration |", "|---|---|---|"]
        for job in outcome.jobs:
            took = "" if job.seconds is None else f"{job.seconds:.1f} s"
            result = f"{_MARK.get(job.status, '')} {job.status}".strip()
            if job.error and job.status not in ("success", "skipped"):
                result += f": {_cell(job.error)}"
            lines.append(f"| {_cell(job.name)} | {result} | {took} |")
        lines.append("")
    if outcome.urls:
        lines += ["**Preview**", ""]
        lines += [f"- {_cell(service)}: {_cell(url)}" for service, url in
                  sorted(outcome.urls.items())]  # fmt: skip
        lines.append("")
    return "\n".join(lines) + "\n"


def write_summary(path: Path, outcome: Outcome) -> None:
    """Appended, as GitHub expects: other steps of the job write theirs too."""
    with path.open("a", encoding="utf-8") as file:
        file.write(markdown(outcome))
