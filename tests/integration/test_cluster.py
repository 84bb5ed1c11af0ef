"""Real Postgres clusters: init, start, stop, restart, port clashes, cleanup."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psycopg
import pytest

from branchline.errors import PostgresError
from branchline.postgres import Cluster, ClusterState
from branchline.postgres.runas import SERVICE_USER

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(cluster_root: Path) -> Cluster:
    c = Cluster(cluster_root / f"c-{os.urandom(4).hex()}")
    yield c  # type: ignore[misc]
    c.destroy()


def test_lifecycle_and_idempotence(cluster: Cluster) -> None:
    assert cluster.state() is ClusterState.MISSING
    cluster.init(durable=False)
    cluster.init(durable=False)  # idempotent
    assert cluster.state() is ClusterState.STOPPED
    cluster.stop()  # stopping what is not running is a no-op
    meta = cluster.start()
    assert cluster.state() is ClusterState.RUNNING
    assert cluster.start() == meta  # starting a running cluster changes nothing
    with psycopg.connect(cluster.uri()) as conn:
        row = conn.execute("SELECT current_user, current_setting('port')").fetchone()
    assert row == ("branchline", str(meta.port))
    cluster.stop()
    assert cluster.state() is ClusterState.STOPPED
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.uri(), connect_timeout=2)
    cluster.start()
    assert cluster.state() is ClusterState.RUNNING
    home = cluster.home
    cluster.destroy()
    cluster.destroy()  # deleting what is gone succeeds
    assert not home.exists()
    assert not cluster.socket_dir.exists()


def test_password_is_required_over_tcp(cluster: Cluster) -> None:
    cluster.init(durable=False)
    meta = cluster.start()
    wrong = f"postgresql://branchline:wrong@127.0.0.1:{meta.port}/postgres"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=2)
    assert (cluster.meta_file.stat().st_mode & 0o777) == 0o600


def test_start_moves_to_a_free_port_when_its_port_is_taken(cluster: Cluster) -> None:
    cluster.init(durable=False)
    taken = cluster.meta().port
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        meta = cluster.start()
    assert meta.port != taken
    assert cluster.meta().port == meta.port
    with psycopg.connect(cluster.uri()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches to the service user")
def test_runs_as_unprivileged_user_when_root(cluster: Cluster) -> None:
    import pwd

    cluster.init(durable=False)
    cluster.start()
    pid = cluster.postmaster_pid()
    assert pid is not None
    uid = Path(f"/proc/{pid}").stat().st_uid
    assert pwd.getpwuid(uid).pw_name == SERVICE_USER
    assert cluster.data_dir.stat().st_uid == uid


def test_crashed_postmaster_is_detected_and_restartable(cluster: Cluster) -> None:
    import signal

    cluster.init(durable=False)
    cluster.start()
    pid = cluster.postmaster_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    cluster.stop()  # must cope with the dead postmaster
    assert cluster.state() is ClusterState.STOPPED
    cluster.start()
    assert cluster.state() is ClusterState.RUNNING


def test_start_without_init_explains(cluster: Cluster) -> None:
    with pytest.raises(PostgresError) as info:
        cluster.start()
    assert "no cluster" in info.value.message
    assert info.value.hint


def test_destroy_stops_a_postmaster_no_file_records(cluster: Cluster) -> None:
    """A starter killed before the postmaster wrote postmaster.pid leaves a server
    known only by its arguments: destroying the cluster stops it all the same."""
    from branchline import processes

    cluster.init(durable=False)
    cluster.start()
    pid = cluster.postmaster_pid()
    assert pid is not None
    (cluster.data_dir / "postmaster.pid").rename(cluster.home / "postmaster.pid.hidden")
    assert cluster.postmaster_pid() is None
    cluster.destroy()
    assert not processes.command_line(pid), "the postmaster still runs"
    assert not cluster.home.exists()


def test_destroy_removes_the_files_while_it_holds_the_start_lock(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start waiting on destroy's lock must find the cluster gone, not half removed:
    the files go while destroy still holds the start lock."""
    import fcntl
    import shutil

    from branchline.postgres import cluster as cluster_module

    cluster.init(durable=False)
    lock_file = cluster.home / "start.lock"
    held: list[bool] = []
    remove = shutil.rmtree

    def watched(path: object, *args: object, **kwargs: object) -> None:
        if Path(str(path)) == cluster.home:
            with lock_file.open("a") as other:
                try:
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append(False)
                except BlockingIOError:
                    held.append(True)
        remove(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cluster_module.shutil, "rmtree", watched)
    cluster.destroy()
    assert held == [True], "destroy let go of the start lock before removing the files"
    assert cluster.state() is ClusterState.MISSING
