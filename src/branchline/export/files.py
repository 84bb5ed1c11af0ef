"""Writing exported files: idempotent, and never over a file branchline did not write
(one without the export's header) unless forced."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from branchline.errors import UsageError


@dataclass(frozen=True)
class Written:
    path: Path
    change: str  # created, updated, unchanged, replaced (a foreign file, --force)

    def as_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "change": self.change}


def _ours(text: str, header: str) -> bool:
    return text.startswith(header)


def write_all(directory: Path, files: dict[str, str], *, header: str, force: bool) -> list[Written]:
    """Write `files` (name -> text) into `directory`. Checked first, all of them: a
    refusal writes nothing."""
    plan: list[tuple[Path, str, str]] = []
    foreign: list[Path] = []
    for name, text in files.items():
        path = directory / name
        try:
            before = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            plan.append((path, text, "created"))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"cannot read {path}: {exc}", hint="Remove it, or export into another --dir."
            ) from None
        if before == text:
            plan.append((path, text, "unchanged"))
        elif _ours(before, header):
            plan.append((path, text, "updated"))
        elif force:
            plan.append((path, text, "replaced"))
        else:
            foreign.append(path)
    if foreign:
        names = ", ".join(str(p) for p in foreign)
        raise UsageError(
            f"{names} {'exists' if len(foreign) == 1 else 'exist'} and "
            f"{'was' if len(foreign) == 1 else 'were'} not written by branchline",
            hint="Move it aside, export into another --dir, or pass --force to overwrite it.",
        )
    directory.mkdir(parents=True, exist_ok=True)
    for path, text, change in plan:
        if change != "unchanged":
            path.write_text(text, encoding="utf-8")
    return [Written(path, change) for path, _text, change in plan]


def repository_top(root: Path) -> tuple[Path, str]:
    """The git work tree holding `root` (where `.git` is) and `root`'s place in it
    ("" at the top, "app/" below); `root` itself outside any repository."""
    resolved = root.resolve()
    for top in (resolved, *resolved.parents):
        if (top / ".git").exists():
            relative = resolved.relative_to(top).as_posix()
            return top, "" if relative == "." else f"{relative}/"
    return resolved, ""


def compare(directory: Path, files: dict[str, str]) -> list[Written]:
    """What writing `files` would change, writing nothing: each one `unchanged`,
    `differs` or `missing`."""
    found = []
    for name, text in files.items():
        path = directory / name
        try:
            before: str | None = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            before = None
        change = "missing" if before is None else "unchanged" if before == text else "differs"
        found.append(Written(path, change))
    return found
