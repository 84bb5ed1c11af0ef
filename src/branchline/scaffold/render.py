"""The text of a starter branchline.toml: every detected command with a comment
saying which file it came from, and what was only guessed."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

from branchline.scaffold.detect import slug
from branchline.scaffold.model import DetectedService, Detection, Note, Step, TestJob, in_dir

HEADER = [
    "# branchline.toml: how branchline builds, tests, previews and deploys this project.",
    "# Written by `branchline init` from what it found; check the lines marked `guess`,",
    "# then run `branchline config check`. ${VAR} and ${VAR:-default} read the",
    "# environment ($$ is a literal $); commands are argument lists or strings split",
    '# like a shell would (never run through a shell; write ["sh", "-c", "..."]).',
    "",
]


def toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string; `$` before `$` or `{` is doubled so
    # that branchline's ${VAR} interpolation gives the command back unchanged.
    return json.dumps(re.sub(r"\$(?=[${])", "$$", value))


def toml_list(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(toml_str(v) for v in values) + "]"


def _comment(note: Note) -> list[str]:
    where = f" (from {note.source})" if note.source else ""
    return _wrap(f"# {'guess' if note.guessed else 'found'}: {note.subject}: {note.text}{where}")


def _wrap(comment: str, indent: str = "#   ") -> list[str]:
    # Also turns any newline (a folder's name may hold one) into a space: a comment
    # line never ends early.
    return textwrap.wrap(comment, width=88, subsequent_indent=indent, break_on_hyphens=False)


def render_starter_config(root: Path, detection: Detection) -> str:
    """The text of a starter branchline.toml for the project at `root`."""
    project = slug(root.resolve().name) or "app"
    lines = [
        *HEADER,
        "[project]",
        f"name = {toml_str(project)}",
        "# The domain previews and production live under: api-preview-8.<zone>, api.<zone>.",
        f"zone = {toml_str(project + '.localhost')}",
        'production_branch = "main"',
        "",
        "[database]",
        'provider = "local"          # or "neon"',
        'parent = "production"       # previews and tests branch from this',
        "# Runs at the project root with DATABASE_URL set to the branch being migrated.",
        *_comment(detection.migrate.note),
        *_changes_directory(detection.migrate.argv),
        f"migrate = {toml_list(detection.migrate.argv)}",
        "",
    ]
    if not detection.services:
        lines += [
            "# No services were detected. Describe each deployable like this:",
            "# [services.api]",
            '# path = "services/api"',
            '# run = ["uvicorn", "main:app", "--port", "{{ port }}"]   # or read PORT',
            '# health_path = "/health"',
            "",
        ]
    for order, service in enumerate(detection.services, start=1):
        # Notes about migrate, tests and release go with those keys.
        notes = [
            n
            for n in detection.notes
            if n.service == service.name and n.subject not in ("migrate", "tests", "release")
        ]
        lines += _service(service, order, notes)
    for job in detection.tests:
        lines += _job(job)
    lines += [
        "[preview]",
        'ttl = "72h"        # previews expire unless their PR is updated',
        "max_live = 10",
        "",
    ]
    return "\n".join(lines)


def _service(service: DetectedService, order: int, notes: list[Note]) -> list[str]:
    lines = [line for note in notes for line in _comment(note)]
    lines += [f"[services.{service.name}]", f"path = {toml_str(service.path)}"]
    if service.build is not None:
        lines.append(f"build = {toml_list(service.build.argv)}")
    if service.runtime == "worker":
        lines += [
            "# A Cloudflare Worker: wrangler bundles it (`wrangler deploy --dry-run`), workerd",
            "# serves it locally; its variables and secrets are its bindings.",
            'runtime = "worker"',
        ]
    else:
        lines += [
            "# run gets PORT in its environment; {{ port }} in an argument is the same number.",
            f"run = {toml_list(service.run.argv)}",
        ]
    lines += [f"health_path = {toml_str(service.health_path)}", f"order = {order}"]
    if service.release is not None:
        lines += _release(service.release)
    lines += [*service.comments, ""]
    return lines


def _release(step: Step) -> list[str]:
    text = (
        f"# found: {step.note.text} (from {step.note.source}). The release phase: run once "
        "per deploy, before the switch, with the service's variables and secrets."
    )
    return [*_wrap(text, indent="# "), f"release = {toml_list(step.argv)}"]


def _changes_directory(argv: tuple[str, ...]) -> list[str]:
    if argv[:3] != in_dir("folder", [])[:3]:
        return []
    return _wrap(f"# (it starts at the project root: sh changes into {argv[4]}/ first)")


def _job(job: TestJob) -> list[str]:
    lines = [
        *_comment(job.step.note),
        *_changes_directory(job.step.argv),
        f"[tests.{job.name}]",
        f"command = {toml_list(job.step.argv)}",
        f"database = {'true' if job.database else 'false'}",
    ]
    if job.createdb:
        lines.append("createdb = true   # the test runner creates its own test database")
    if job.service is not None:
        lines.append(f"service = {toml_str(job.service)}")
    return [*lines, ""]
