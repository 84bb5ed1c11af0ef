"""The `branchline` command: the one place that turns errors into messages and exit
codes. The typer application (`branchline.cli.app`) is imported only when the
command line needs it: `branchline --version` answers without it."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, cast

from branchline import __version__
from branchline.cli.output import Output
from branchline.errors import BranchlineError, from_os_error
from branchline.masking import mask_url

if TYPE_CHECKING:
    import typer


def __getattr__(name: str) -> Any:
    # `branchline.cli.main.app` as before the application moved to its own module.
    if name == "app":
        from branchline.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _app(args: list[str]) -> typer.Typer:
    found = globals().get("app")  # one set on this module (a test's) wins
    if found is None:
        from branchline.cli.app import app_for

        return app_for(args)
    return cast("typer.Typer", found)


GLOBAL_FLAGS = ("--json", "--debug")


def hoist_global_flags(args: list[str]) -> list[str]:
    """Let --json and --debug stand anywhere on the line, not only before the command."""
    try:
        end = args.index("--")
    except ValueError:
        end = len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
    return flags + rest + args[end:]


def run(argv: list[str] | None = None) -> int:
    """Entry point: exit codes 0 ok, 1 operation failed, 2 bad usage or config."""
    args = hoist_global_flags(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("BRANCHLINE_DEBUG", "") not in ("", "0")
    json_output = "--json" in args or os.environ.get("BRANCHLINE_JSON", "") not in ("", "0")
    output = Output(json=json_output, debug=debug)
    code = _version_only(args)
    if code is None:
        code = _dispatch(args, output, debug)
    if argv is None:
        sys.exit(code)
    return code


def _version_only(args: list[str]) -> int | None:
    """`branchline --version` (with global flags at most) without loading the application;
    any other line with --version is typer's to parse."""
    if "--version" not in args or not all(a == "--version" or a in GLOBAL_FLAGS for a in args):
        return None
    sys.stdout.write(f"branchline {__version__}\n")
    return 0


def _dispatch(args: list[str], output: Output, debug: bool) -> int:
    import traceback

    app = _app(args)
    try:
        # Standalone mode: typer reports usage errors itself (exit 2) and raises
        # SystemExit; everything else reaches the handlers below.
        app(args=args, prog_name="branchline")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BranchlineError as exc:
        if debug:
            traceback.print_exc()
        output.error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        output.err.print("aborted")
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        from branchline.postgres.space import DiskFullError, is_disk_full

        if is_disk_full(exc):  # something the user can fix, not a bug
            error = DiskFullError(f"the disk is full: {mask_url(str(exc))}")
            output.error(error)
            return error.exit_code
        known = from_os_error(exc)  # a missing program, a port in use: not a bug
        if known is not None:
            output.error(known)
            return known.exit_code
        output.error(
            BranchlineError(
                f"internal error: {type(exc).__name__}: {mask_url(str(exc))}",
                hint="This is a bug in branchline; run again with --debug and report the "
                "traceback.",
            )
        )
        return 1
    return 0
