"""Failures a user can fix are said as such: a program that cannot be started, a
port in use; the CLI's last net never calls them a bug."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from branchline.cli import main
from branchline.cli.output import Output
from branchline.errors import BranchlineError, from_os_error
from branchline.providers.compute.releases import run_build


def raised(action: object) -> OSError:
    with pytest.raises(OSError) as caught:
        action()  # type: ignore[operator]
    return caught.value


def test_a_missing_program(tmp_path: Path) -> None:
    exc = raised(lambda: subprocess.run([str(tmp_path / "no-such-server")], check=False))
    known = from_os_error(exc)
    assert known is not None and "no-such-server" in known.message
    assert "No such file or directory" in known.message and "branchline.toml" in known.hint


def test_a_program_that_is_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "build.sh"
    script.write_text("#!/bin/sh\n")
    exc = raised(lambda: subprocess.run([str(script)], check=False))
    known = from_os_error(exc)
    assert known is not None and "Permission denied" in known.message
    assert "chmod +x" in known.hint


def test_a_port_in_use() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with socket.socket() as second:
            exc = raised(lambda: second.bind(("127.0.0.1", port)))
    known = from_os_error(exc)
    assert known is not None and "port is already in use" in known.message
    assert "[edge] port" in known.hint


def test_other_failures_stay_unknown() -> None:
    assert from_os_error(OSError(errno.EIO, "I/O error")) is None
    assert from_os_error(ValueError("x")) is None


def test_the_build_names_the_program_that_cannot_run(tmp_path: Path) -> None:
    (tmp_path / "build.sh").write_text("#!/bin/sh\n")  # not executable
    with pytest.raises(BranchlineError) as refused:
        run_build(["./build.sh"], tmp_path, tmp_path / "log", dict(os.environ))
    assert refused.value.message == "cannot run the build command './build.sh': Permission denied"
    assert "chmod +x" in refused.value.hint


def test_the_cli_says_a_port_in_use_and_never_a_bug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def command(**_: object) -> None:
        raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))

    monkeypatch.setattr(main, "app", command)
    code = main._dispatch(["serve"], Output(json=True), debug=False)
    said = json.loads(capsys.readouterr().err)
    assert code == 1 and "port is already in use" in said["message"]
    assert "internal error" not in said["message"] and "bug" not in said["hint"]
