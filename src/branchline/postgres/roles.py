"""Database roles of a cluster: a superuser only branchline uses, and the
application role code from a branch is given.

Every cluster gets passwords of its own: a copy (branch, spare, restore) carries
its parent's roles and their passwords in its data, so the copy's are replaced as
soon as it runs. The application role owns the app database and is nothing more:
not a superuser (so no `COPY ... TO PROGRAM`, no reading the server's files), no
role creation, databases only where a test job asks for it.
"""

from __future__ import annotations

import secrets

import psycopg
from psycopg import sql

from branchline.errors import PostgresError
from branchline.postgres.cluster import Cluster, ClusterMeta

APP_USER = "app"


def new_password() -> str:
    return secrets.token_urlsafe(24)


def ensure_app_role(cluster: Cluster, database: str) -> ClusterMeta:
    """Give the running `cluster` its application role, owner of `database`, if it
    has none (a new root, or a cluster made before roles existed: what the superuser
    owned in the app database becomes the application role's)."""
    meta = cluster.meta()
    if meta.app_user is not None and meta.app_password is not None:
        return meta
    password = new_password()
    with _connect(cluster, "postgres") as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_USER,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(
                "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                "NOBYPASSRLS PASSWORD {}"
            ).format(sql.SQL(verb), sql.Identifier(APP_USER), sql.Literal(password))
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(database), sql.Identifier(APP_USER)
            )
        )
        # The maintenance databases are branchline's, not the app's.
        for other in ("postgres", "template1"):
            conn.execute(
                sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(other))
            )
    with _connect(cluster, database) as conn:
        _hand_over_objects(conn, meta.superuser)
    updated = ClusterMeta(meta.superuser, meta.password, meta.port, meta.settings,
                          APP_USER, password)  # fmt: skip
    cluster.write_meta(updated)
    return updated


# What the superuser made in the app database (a cluster from before roles existed):
# schemas, relations, free-standing sequences, functions and types, never the
# system's own (REASSIGN OWNED cannot skip those).
_OWNED = """
SELECT 'SCHEMA', format('%%I', nspname) FROM pg_namespace
 WHERE nspowner = %(owner)s::regrole AND nspname NOT LIKE 'pg\\_%%'
   AND nspname <> 'information_schema'
UNION ALL
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                      WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
       format('%%I.%%I', n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relowner = %(owner)s::regrole AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
   AND n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema'
   AND NOT (c.relkind = 'S' AND EXISTS (
       SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
UNION ALL
SELECT 'FUNCTION', format('%%I.%%I(%%s)', n.nspname, p.proname,
                          pg_get_function_identity_arguments(p.oid))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.proowner = %(owner)s::regrole
   AND n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'TYPE', format('%%I.%%I', n.nspname, t.typname)
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE t.typowner = %(owner)s::regrole AND t.typtype IN ('e', 'd', 'r') AND t.typelem = 0
   AND n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema'
"""


def _hand_over_objects(conn: psycopg.Connection[tuple[object, ...]], superuser: str) -> None:
    for kind, name in conn.execute(_OWNED, {"owner": superuser}).fetchall():
        conn.execute(
            sql.SQL("ALTER {} {} OWNER TO {}").format(
                sql.SQL(str(kind)), sql.SQL(str(name)), sql.Identifier(APP_USER)
            )
        )


def replace_passwords(cluster: Cluster, *, app_password: str | None = None) -> ClusterMeta:
    """New passwords for the running copy `cluster`: its superuser's, and its
    application role's (`app_password` to keep one it had: a reset keeps its URI).
    Until this runs the copy opens with its parent's passwords, so copies are made
    under an intent record: a crash before it leaves a branch gc removes."""
    meta = cluster.meta()
    superuser_password = new_password()
    app = app_password or new_password()
    with _connect(cluster, "postgres") as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(meta.superuser), sql.Literal(superuser_password)
            )
        )
        if meta.app_user is not None:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(meta.app_user), sql.Literal(app)
                )
            )
    updated = ClusterMeta(
        meta.superuser, superuser_password, meta.port, meta.settings, meta.app_user,
        app if meta.app_user is not None else None,
    )  # fmt: skip
    cluster.write_meta(updated)
    return updated


def allow_createdb(cluster: Cluster) -> None:
    """Let the application role create databases (a test runner's own test database)."""
    meta = cluster.meta()
    if meta.app_user is None:
        raise PostgresError(f"the cluster in {cluster.home} has no application role")
    with _connect(cluster, "postgres") as conn:
        conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(meta.app_user)))


def _connect(cluster: Cluster, database: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(cluster.uri(database), autocommit=True, connect_timeout=10)
