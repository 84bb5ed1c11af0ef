"""Where the services of a project are, and what each directory says about itself.

The root, a `backend/`-like folder, and every folder under the conventional monorepo
parents (`services/*`, `apps/*`, ...) are asked, most explicit file first: a Procfile,
then Python (Django, alembic, FastAPI, Flask), Node, Go, Rust; a Cloudflare Worker's
wrangler config before all of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from branchline.config.services import WRANGLER_CONFIGS
from branchline.scaffold import node, procfile, python
from branchline.scaffold.model import (
    DetectedService,
    Detection,
    Findings,
    Note,
    Step,
    TestJob,
)

# A single deployable kept beside the rest of a repository.
SERVICE_FOLDERS = ("backend", "server", "frontend")
# Folders that monorepos conventionally keep their deployables in.
SERVICE_PARENTS = ("services", "apps", "workers", "packages", "cmd")
# Libraries live in packages/*: only a folder that serves something is a service there.
LIBRARY_PARENTS = ("packages",)
MAX_SERVICES = 20
NO_MIGRATIONS = (
    "sh",
    "-c",
    "echo 'branchline: no migrations yet; set [database] migrate in branchline.toml'",
)


def _compiled(found: Findings) -> None:
    """Go and Rust: the build tools' conventions."""
    guesses: dict[str, tuple[list[str], list[str]]] = {
        "go.mod": (["go", "build", "-o", "app", "."], ["./app"]),
        "Cargo.toml": (["cargo", "build", "--release"], ["cargo", "run", "--release"]),
    }
    for marker, (build, run) in guesses.items():
        if not (found.directory / marker).is_file():
            continue
        found.mark(marker)
        source = found.file(marker)
        if found.build is None:
            found.build = found.step("build", build, f"{marker}'s usual build", source)
        if found.run is None:
            found.run = found.step(
                "run", run, "the usual run command; make it listen on PORT", source, guessed=True
            )
        return


def _worker(found: Findings) -> None:
    """A Cloudflare Worker (its wrangler config): `runtime = "worker"`, no run command
    (wrangler bundles it, workerd serves it); its package.json still gives its build."""
    for marker in WRANGLER_CONFIGS:
        if (found.directory / marker).is_file():
            found.mark(marker)
            found.runtime = "worker"
            found.serves = True
            found.run = found.step(
                "run", (), "a Cloudflare Worker: wrangler bundles it, workerd serves it",
                found.file(marker),
            )  # fmt: skip
            return


DETECTORS: tuple[Callable[[Findings], None], ...] = (
    _worker,
    procfile.detect,
    python.detect,
    node.detect,
    _compiled,
)


def slug(text: str) -> str:
    """A name branchline accepts for a service or job (see config.fields)."""
    made = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not made or not made[0].isalpha():
        made = "svc-" + made
    return made[:40].rstrip("-")


def _candidates(root: Path) -> list[tuple[Path, str]]:
    """(directory, parent folder name or "") in the order they are asked."""
    found = [(root, "")]
    found += [(root / name, "") for name in SERVICE_FOLDERS if (root / name).is_dir()]
    for parent in SERVICE_PARENTS:
        if (root / parent).is_dir():
            children = sorted(p for p in (root / parent).iterdir() if p.is_dir())
            found += [(p, parent) for p in children if not p.name.startswith(".")]
    return found


def analyse(root: Path, directory: Path) -> Findings:
    found = Findings(root=root, directory=directory)
    for detector in DETECTORS:
        detector(found)
    return found


def detect_project(root: Path) -> Detection:
    """What init detects and guesses about the project at `root`."""
    root = root.resolve()
    analysed = [(analyse(root, d), parent) for d, parent in _candidates(root)]
    top, rest = analysed[0][0], analysed[1:]
    chosen = [
        f
        for f, parent in rest
        if f.marker is not None and (f.serves or parent not in LIBRARY_PARENTS)
    ][:MAX_SERVICES]
    # The root is a service of its own when it serves something, or when it is all there is.
    if top.marker is not None and (top.serves or not chosen):
        chosen.insert(0, top)
    notes: list[Note] = []
    services: list[DetectedService] = []
    names: set[str] = set()
    for found in chosen:
        name = _unique(slug(found.directory.name if found.path != "." else root.name), names)
        services.append(_service(found, name))
        notes += [replace(n, service=name) for n in found.notes]
    others = [f for f, _ in analysed if all(f is not c for c in chosen)]
    for found in others:
        notes += [n for n in found.notes if n.subject in ("migrate", "tests", "package.json")]
    migrate = _migrate([f for f, _ in analysed], notes)
    tests = _tests(chosen, services, others)
    if not services:
        notes.append(Note(True, "services", "none found: describe each under [services.<name>]"))
    return Detection(services, migrate, tests, notes)


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        suffix = f"-{number}"
        candidate, number = name[: 40 - len(suffix)] + suffix, number + 1
    taken.add(candidate)
    return candidate


def _service(found: Findings, name: str) -> DetectedService:
    assert found.run is not None and found.marker is not None  # every detector sets run
    health = found.health_path
    if health is None:
        found.note(
            "health_path",
            "/health: no health route found; point it at a URL that "
            "answers 200 once the service is ready",
            guessed=True,
        )
    return DetectedService(
        name=name,
        path=found.path,
        marker=found.marker,
        run=found.run,
        build=found.build,
        health_path=health or "/health",
        release=found.release,
        comments=tuple(line.replace("<service>", name) for line in found.comments),
        runtime=found.runtime,
    )


def _migrate(analysed: list[Findings], notes: list[Note]) -> Step:
    steps = [f.migrate for f in analysed if f.migrate is not None]
    for extra in steps[1:]:
        notes.append(
            Note(
                True,
                "migrate",
                f"also found {extra.note.text}: not run (one migrate "
                "command per project; chain them in sh -c if both are needed)",
                extra.note.source,
            )
        )
    if steps:
        return steps[0]
    note = Note(True, "migrate", "no migrations found: set [database] migrate")
    notes.append(note)
    return Step(NO_MIGRATIONS, note)


def _tests(
    chosen: list[Findings], services: list[DetectedService], others: list[Findings]
) -> list[TestJob]:
    owners = {id(f): s.name for f, s in zip(chosen, services, strict=True)}
    found = [
        (step, db, createdb, owners.get(id(f)))
        for f in [*chosen, *others]
        for step, db, createdb in f.tests
    ]
    taken: set[str] = set()
    jobs = []
    for step, database, createdb, service in found:
        base = "test" if len(found) == 1 else slug(f"test-{service or 'root'}")
        jobs.append(TestJob(_unique(base, taken), step, database, createdb, service))
    return jobs
