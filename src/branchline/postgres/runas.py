"""Postgres refuses to run as root: when branchline runs as root, its clusters
run as an unprivileged system user, created on first use."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from branchline.errors import PostgresError

SERVICE_USER = "branchline"


@dataclass(frozen=True)
class RunAs:
    """Who a cluster's processes run as. `uid is None` means "as we are"."""

    uid: int | None = None
    gid: int | None = None
    name: str | None = None

    @property
    def switches(self) -> bool:
        return self.uid is not None

    @property
    def extra_groups(self) -> list[int] | None:
        # Drop root's supplementary groups along with its uid.
        return None if self.uid is None else []

    def own(self, path: Path) -> None:
        """Hand a directory (not recursively) to the cluster's user."""
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def unreachable_ancestor(self, path: Path) -> Path | None:
        """The first ancestor of `path` the cluster's user cannot enter, if any."""
        if self.uid is None:
            return None
        for parent in reversed(path.absolute().parents):
            if not parent.exists():
                break
            st = parent.stat()
            searchable = st.st_mode & 0o001 or (st.st_uid == self.uid and st.st_mode & 0o100)
            if not searchable:
                return parent
        return None

    def check_reachable(self, path: Path) -> None:
        """Every ancestor of `path` must be searchable by the cluster's user."""
        parent = self.unreachable_ancestor(path)
        if parent is not None:
            raise PostgresError(
                f"the Postgres user {self.name!r} cannot enter {parent}, so it cannot reach {path}",
                hint=f"Run `chmod o+x {parent}`, or keep branchline's state elsewhere "
                "with BRANCHLINE_STATE_DIR=/some/readable/dir.",
            )


def current_run_as() -> RunAs:
    """As ourselves, unless we are root; then as the service user (created if missing)."""
    if os.geteuid() != 0:
        return RunAs()
    entry = _lookup(SERVICE_USER) or _create_user(SERVICE_USER)
    return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _create_user(name: str) -> pwd.struct_passwd:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--shell", shell, name],
        capture_output=True,
        text=True,
        check=False,
    )
    # Another branchline process may have created it at the same moment: look again.
    entry = _lookup(name)
    if entry is None:
        raise PostgresError(
            f"cannot create the system user {name!r} to run Postgres as: "
            f"{result.stderr.strip() or 'useradd failed'}",
            hint=f"Create it yourself (`useradd --system {name}`) or run branchline "
            "as an unprivileged user.",
        )
    return entry
