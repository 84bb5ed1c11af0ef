"""How untrusted code runs: inside bubblewrap, as an unprivileged user, seeing only
its own files, the system's directories read-only and a private /tmp, with only
the environment it is given.

Code from a branch or a pull request (tests, builds, migrations, services) is
untrusted, as on a CI runner. A `Sandbox` turns its argument list into one that
runs it boxed:

- the file system is empty but for the system directories (read-only), the tools
  on its PATH and branchline's interpreter (read-only), the directories the caller
  names (its worktree or release, writable only where asked), a private `/tmp`,
  `/dev` and a `/proc` of its own;
- branchline's state directory (the secret key, the state database, other
  environments' releases and logs) is never mounted, and is hidden by an empty
  directory wherever a mounted directory would contain it;
- its own PID, IPC and UTS namespaces; the network is the machine's (services and
  tests reach their database on loopback);
- as root, the boxed code runs as the unprivileged user `branchline-sandbox`
  (bubblewrap mounts as root, then `setpriv` drops every privilege); as an
  ordinary user, as that user in a user namespace.

Where bubblewrap is missing nothing untrusted runs: the error says how to install
it. `[security] sandbox = "off"` runs code unboxed, on purpose, and says so.

Linux only: bubblewrap is built on Linux namespaces. On any other system (a Mac)
nothing untrusted runs either: the error says so, and what to do instead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from branchline.config import Config
from branchline.errors import UsageError

SANDBOX_USER = "branchline-sandbox"
SETPRIV = "/usr/bin/setpriv"
# Read-only everywhere: what programs need to start (loader, libraries, certificates,
# resolver, time zones). Nothing in them is readable by an unprivileged user that is
# not readable on the machine anyway.
SYSTEM_DIRECTORIES = ("/usr", "/etc", "/opt")
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
PRIVATE_TMP = "/tmp"  # noqa: S108 - the box's own tmpfs, not the machine's /tmp
HOME = PRIVATE_TMP
INSTALL_HINT = (
    "Install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: "
    "`dnf install bubblewrap`). Only if every branch's code is trusted, set "
    '`sandbox = "off"` under [security] in branchline.toml.'
)


class SandboxUnavailableError(UsageError):
    default_hint = INSTALL_HINT


NOT_LINUX_HINT = (
    "Run branchline on Linux (a Linux virtual machine or container will do, e.g. with "
    "Docker Desktop, Colima, Lima or OrbStack on a Mac) to run code from branches "
    'boxed. Only if every branch\'s code is trusted, set `sandbox = "off"` under '
    "[security] in branchline.toml: it then runs unboxed, as you."
)


@dataclass(frozen=True)
class Box:
    """What one piece of untrusted code may see."""

    writable: tuple[Path, ...] = ()  # mounted read-write at the same path
    readable: tuple[Path, ...] = ()  # mounted read-only at the same path
    # When the starter goes, so does the code (a job's step); a service outlives it.
    with_parent: bool = True
    # Variables the starter carries (to find its processes again) that the code inside
    # must not get: paths into branchline's state.
    unset: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sandbox:
    """The sandbox of one branchline: its mode, what it hides, what it shows."""

    enabled: bool = True
    protected: tuple[Path, ...] = ()  # never visible: the state directory, `.branchline/`
    tools: tuple[Path, ...] = ()  # read-only directories the code's programs live in
    path: tuple[str, ...] = ()  # the PATH boxed code gets
    bwrap: str | None = field(default=None, repr=False)

    @classmethod
    def for_project(cls, config: Config, state_dir: Path) -> Sandbox:
        """The sandbox `[security]` asks for, hiding the state directory and the
        project's `.branchline/`. PATH: `[security] path`, else `default_path()`
        (never the PATH of whoever started branchline: its virtualenv is not the
        project's), minus every entry inside the state."""
        protected = (state_dir, config.root / ".branchline")
        wanted = config.security.path or default_path()
        path = [
            entry for entry in wanted
            if entry and not any(_within(Path(entry).absolute(), p.absolute()) for p in protected)
        ]  # fmt: skip
        return cls.configure(
            enabled=config.security.sandbox == "bubblewrap", protected=protected, path=path,
            expose=[Path(p) for p in config.security.expose],
        )  # fmt: skip

    @classmethod
    def configure(
        cls,
        *,
        enabled: bool,
        protected: Iterable[Path],
        path: Sequence[str],
        expose: Iterable[Path] = (),
    ) -> Sandbox:
        """The sandbox for code whose PATH is `path`: its tools are shown read-only:
        each PATH directory (a virtualenv whole), branchline's own interpreter, and
        what `expose` names; never anything that holds a protected directory."""
        guarded = tuple(p.resolve() for p in protected)
        candidates = [*_tool_dirs(path), Path(sys.prefix), Path(sys.base_prefix), *expose]
        tools: list[Path] = []
        for candidate in candidates:
            for shown in _showable(candidate, guarded):
                if shown not in tools and not any(_within(shown, t) for t in tools):
                    tools = [t for t in tools if not _within(t, shown)] + [shown]
        return cls(enabled, guarded, tuple(tools), tuple(path),
                   shutil.which("bwrap") if enabled else None)  # fmt: skip

    def describe(self) -> str:
        """One line for run logs and `status`."""
        if not self.enabled:
            return 'sandbox: OFF ([security] sandbox = "off"): untrusted code runs unboxed'
        if sys.platform != "linux":
            return f"sandbox: bubblewrap, unavailable on {_system_name()} (Linux only)"
        who = SANDBOX_USER if os.geteuid() == 0 else "this user"
        return f"sandbox: bubblewrap, as {who}, no access to branchline's state"

    def check(self) -> None:
        """Refuse clearly when untrusted code cannot be boxed."""
        if not self.enabled:
            return
        if sys.platform != "linux":
            raise SandboxUnavailableError(
                f"the sandbox for code from branches needs Linux (bubblewrap is built on "
                f"Linux namespaces) and this is {_system_name()}; branchline does not run "
                "that code unboxed",
                hint=NOT_LINUX_HINT,
            )
        if self.bwrap is None:
            raise SandboxUnavailableError(
                "bubblewrap (`bwrap`) is not installed, so code from branches cannot be "
                "run in a sandbox; branchline does not run it unboxed"
            )
        if os.geteuid() == 0 and not Path(SETPRIV).exists():
            raise SandboxUnavailableError(
                f"{SETPRIV} (util-linux) is missing: as root, boxed code could not drop "
                "its privileges",
                hint="Install util-linux (`apt-get install util-linux`).",
            )

    def wrap(self, argv: Sequence[str], box: Box, *, cwd: Path) -> list[str]:
        """`argv` run in `box`, starting in `cwd` (which must be inside it)."""
        if not self.enabled:
            return list(argv)
        self.check()
        assert self.bwrap is not None
        # /tmp first: worktrees live under it, and a later tmpfs would hide them. Sticky
        # and writable by all, as /tmp is: the code runs as another user than the one
        # mounting it, and servers (gunicorn's heartbeat files, Python's tempfile) use it.
        args = [self.bwrap, *_system_mounts(), "--perms", "1777", "--tmpfs", PRIVATE_TMP,
                "--proc", "/proc", "--dev", "/dev"]  # fmt: skip
        made: set[Path] = set()
        for how, paths in (("--ro-bind", (*self.tools, *box.readable)),
                           ("--bind", box.writable)):  # fmt: skip
            for path in paths:
                args += [*_parents(path, made), how, str(path), str(path)]
        hidden: set[Path] = set()
        for shown in (*self.tools, *box.readable, *box.writable):
            for secret in self.protected:
                if _within(secret, shown) and secret.exists() and secret not in hidden:
                    hidden.add(secret)
                    args += ["--tmpfs", str(secret)]  # an empty directory in its place
        for name in box.unset:
            args += ["--unsetenv", name]
        args += [
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--chdir", str(cwd),
        ]  # fmt: skip
        if box.with_parent:
            args.append("--die-with-parent")
        if os.geteuid() == 0:
            user = sandbox_user()
            args += [
                "--", SETPRIV, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
            ]  # fmt: skip
        else:
            args.append("--unshare-user")
        return [*args, "--", *argv]

    def hand_over(self, path: Path) -> None:
        """Let the boxed code write `path` (a worktree, a release being built): as root,
        the sandbox user gets it; otherwise it is ours already."""
        if not self.enabled or os.geteuid() != 0:
            return
        user = sandbox_user()
        for root, dirs, files in os.walk(path):
            top = Path(root)
            for name in (top, *(top / n for n in (*dirs, *files))):
                os.lchown(name, user.pw_uid, user.pw_gid)

    def base_env(self, own: Path | None = None) -> dict[str, str]:
        """What every program from a branch gets before its own variables: a PATH (the
        tools of its own tree `own` first: its `.venv/bin`, `node_modules/.bin`), a
        home in its private /tmp, a UTF-8 locale. Nothing of the environment branchline
        itself was started with (its shell's variables, tokens, virtualenv)."""
        tools = [str(own / entry) for entry in OWN_TOOLS] if own is not None else []
        return {
            "PATH": os.pathsep.join([*tools, *self.path]), "HOME": HOME, "LANG": "C.UTF-8",
            # The repository's history is shown read-only and belongs to another
            # user: git would refuse it as of "dubious ownership" otherwise.
            "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
            "GIT_CONFIG_VALUE_0": "*",
        }  # fmt: skip


# A tree's own tools (relative to it), first on the PATH of code run in it.
OWN_TOOLS = (".venv/bin", "node_modules/.bin")


def default_path() -> tuple[str, ...]:
    """The PATH of code from a branch unless `[security] path` says otherwise: the
    system's tools and the Python branchline runs on (its base installation, not a
    virtualenv). A release's own tools (`.venv/bin`, `node_modules/.bin`) come first."""
    entries = [str(Path(sys.base_prefix) / "bin"), "/usr/local/bin", "/usr/bin", "/bin"]
    return tuple(dict.fromkeys(e for e in entries if Path(e).is_dir()))


def sandbox_user() -> pwd.struct_passwd:
    """The unprivileged user boxed code runs as when branchline runs as root."""
    try:
        return pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--shell", shell, SANDBOX_USER],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        return pwd.getpwnam(SANDBOX_USER)  # another process may have made it meanwhile
    except KeyError:
        raise SandboxUnavailableError(
            f"cannot create the system user {SANDBOX_USER!r} that boxed code runs as: "
            f"{result.stderr.strip() or 'useradd failed'}",
            hint=f"Create it yourself (`useradd --system {SANDBOX_USER}`).",
        ) from None


def scrubbed(env: Mapping[str, str], keep: Iterable[str]) -> dict[str, str]:
    """Only the named variables of `env` (for code that is not boxed, too)."""
    return {k: env[k] for k in keep if k in env}


# -- internals ------------------------------------------------------------------------


def _system_name() -> str:
    return {"darwin": "macOS"}.get(sys.platform, sys.platform)


def _system_mounts() -> list[str]:
    args: list[str] = []
    for directory in SYSTEM_DIRECTORIES:
        if Path(directory).is_dir():
            args += ["--ro-bind", directory, directory]
    for link in SYSTEM_LINKS:
        path = Path(link)
        if path.is_symlink():
            args += ["--symlink", str(path.readlink()), link]
        elif path.is_dir():
            args += ["--ro-bind", link, link]
    return args


def _parents(path: Path, made: set[Path]) -> list[str]:
    """Directories leading to `path`, made enterable (not listable) in the box, so
    that the code can reach what is mounted and see nothing else on the way."""
    args: list[str] = []
    for parent in reversed(path.parents):
        if parent == Path("/") or parent in made or str(parent) in (*SYSTEM_DIRECTORIES, HOME):
            continue
        made.add(parent)
        args += ["--perms", "0711", "--dir", str(parent)]
    return args


def _tool_dirs(path: Sequence[str]) -> list[Path]:
    """What each PATH entry needs shown: the directory itself, or the whole
    virtualenv it is the `bin` of (its packages live beside it). Never a parent
    otherwise: `~/.cargo/bin` must not show `~/.cargo` and its credentials."""
    found = []
    for entry in path:
        directory = Path(entry)
        if not directory.is_absolute() or not directory.is_dir():
            continue
        venv = directory.parent
        found.append(venv if (venv / "pyvenv.cfg").is_file() else directory)
    return found


def _showable(candidate: Path, protected: tuple[Path, ...]) -> list[Path]:
    """`candidate` if it holds no protected directory; else nothing (a tool directory
    that contains branchline's state is shown only through its `bin`)."""
    try:
        resolved = candidate.resolve()
    except OSError:
        return []
    if not resolved.is_dir() or resolved == Path("/"):
        return []
    if any(str(resolved).startswith(system + "/") or str(resolved) == system
           for system in SYSTEM_DIRECTORIES):  # fmt: skip
        return []  # mounted already
    if any(_within(secret, resolved) or _within(resolved, secret) for secret in protected):
        binary = resolved / "bin"
        if binary.is_dir() and not any(_within(secret, binary) for secret in protected):
            return [binary]
        return []
    return [resolved]


def _within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents
