"""The DatabaseProvider contract, for the in-memory fake and the local provider:
branches are created or returned by name, copy their parent's data and then go
their own way, reset to the parent's current data under the same URI, are deleted
once (the root only with force), and a restore holds the root as it was."""

from __future__ import annotations

from datetime import timedelta

import pytest

from branchline.errors import UsageError
from branchline.providers.database import BranchStatus, DatabaseProvider
from tests.contract.conftest import DatabaseContract


def names(database: DatabaseContract) -> set[str]:
    return {b.name for b in database.run(database.provider.list_branches())}


def test_the_provider_satisfies_the_protocol(database: DatabaseContract) -> None:
    assert isinstance(database.provider, DatabaseProvider)
    root = database.run(database.provider.get_branch(database.root))
    assert root is not None and root.parent is None and root.status is BranchStatus.READY


def test_create_returns_the_existing_branch_of_that_name(database: DatabaseContract) -> None:
    db, run = database.provider, database.run
    first = run(db.create_branch("idem-1"))
    assert (first.name, first.parent, first.status) == ("idem-1", database.root, BranchStatus.READY)
    again = run(db.create_branch("idem-1"))
    assert (again.name, again.parent, again.created_at, again.port) == (
        first.name, first.parent, first.created_at, first.port,
    )  # fmt: skip
    assert names(database) == {database.root, "idem-1"}
    found = run(db.get_branch("idem-1"))
    assert found is not None and found.created_at == first.created_at


def test_delete_succeeds_once_and_is_false_when_gone(database: DatabaseContract) -> None:
    db, run = database.provider, database.run
    run(db.create_branch("gone-1"))
    assert run(db.delete_branch("gone-1")) is True
    assert run(db.get_branch("gone-1")) is None
    assert names(database) == {database.root}
    assert run(db.delete_branch("gone-1")) is False
    assert run(db.delete_branch("never-made")) is False
    with pytest.raises(UsageError):
        run(db.connection_uri("gone-1"))


def test_a_branch_starts_as_a_copy_of_its_parent(database: DatabaseContract) -> None:
    db, run = database.provider, database.run
    database.write(database.root, "greeting", "hello")
    database.write(database.root, "count", "1")
    run(db.create_branch("copy-1"))
    assert database.read("copy-1") == {"greeting": "hello", "count": "1"}
    # A branch of a branch copies that branch (its own changes included).
    database.write("copy-1", "count", "2")
    child = run(db.create_branch("copy-2", parent="copy-1"))
    assert child.parent == "copy-1"
    assert database.read("copy-2") == {"greeting": "hello", "count": "2"}


def test_writes_to_a_branch_do_not_reach_its_parent(database: DatabaseContract) -> None:
    db, run = database.provider, database.run
    database.write(database.root, "shared", "before")
    run(db.create_branch("iso-1"))
    assert run(db.connection_uri("iso-1")) != run(db.connection_uri(database.root))
    database.write("iso-1", "shared", "on the branch")
    database.write("iso-1", "mine", "branch only")
    database.write(database.root, "later", "parent only")
    assert database.read(database.root) == {"shared": "before", "later": "parent only"}
    assert database.read("iso-1") == {"shared": "on the branch", "mine": "branch only"}


def test_reset_takes_the_parents_current_data_and_keeps_the_uri(
    database: DatabaseContract,
) -> None:
    db, run = database.provider, database.run
    database.write(database.root, "v", "first")
    created = run(db.create_branch("reset-1"))
    before = run(db.connection_uri("reset-1"))
    database.write("reset-1", "v", "changed on the branch")
    database.write("reset-1", "extra", "branch only")
    database.write(database.root, "v", "changed on the parent")
    reset = run(db.reset_branch("reset-1"))
    assert (reset.name, reset.parent, reset.status) == ("reset-1", database.root,
                                                        BranchStatus.READY)  # fmt: skip
    assert reset.created_at == created.created_at
    assert run(db.connection_uri("reset-1")) == before
    assert database.read("reset-1") == {"v": "changed on the parent"}
    with pytest.raises(UsageError):
        run(db.reset_branch("no-such-branch"))


def test_the_root_is_deleted_only_with_force(database: DatabaseContract) -> None:
    db, run = database.provider, database.run
    with pytest.raises(UsageError, match="root"):
        run(db.delete_branch(database.root))
    assert run(db.get_branch(database.root)) is not None
    assert database.root in names(database)


def test_an_unknown_parent_or_a_bad_name_is_a_usage_error(database: DatabaseContract) -> None:
    db, run = database.provider, database.run
    with pytest.raises(UsageError, match="does not exist"):
        run(db.create_branch("orphan-1", parent="no-such-branch"))
    assert run(db.get_branch("orphan-1")) is None
    for bad in ["Has Spaces", "../escape", "a;b", "", "x" * 64]:
        with pytest.raises(UsageError):
            run(db.create_branch(bad))
    with pytest.raises(UsageError):
        run(db.create_branch("self-1", parent="self-1"))
    assert names(database) == {database.root}


def test_restore_holds_the_root_as_it_was(database: DatabaseContract) -> None:
    db, run = database.provider, database.run
    database.write(database.root, "row", "kept")
    noted = database.moment()
    database.write(database.root, "row", "overwritten")
    database.write(database.root, "late", "after the moment")

    restored = run(db.restore("restored-1", noted))
    assert restored.parent == database.root and restored.status is BranchStatus.READY
    assert restored.detail["restored_to"] == noted.isoformat()
    assert database.read("restored-1") == {"row": "kept"}
    assert database.read(database.root) == {"row": "overwritten", "late": "after the moment"}
    # Created or returned by name: the same restore again is the same branch; a
    # restore to another moment under that name is refused.
    again = run(db.restore("restored-1", noted))
    assert again.created_at == restored.created_at
    with pytest.raises(UsageError):
        run(db.restore("restored-1", noted - timedelta(milliseconds=100)))
    # An ordinary branch afterwards: writable, and its own.
    database.write("restored-1", "row", "edited")
    assert database.read(database.root)["row"] == "overwritten"
    with pytest.raises(UsageError):
        run(db.restore("too-early-1", noted - timedelta(days=3)))
    assert names(database) == {database.root, "restored-1"}
