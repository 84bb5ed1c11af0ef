-- The edge proxy's routing table: one row per public host name, pointing at the
-- local process that currently serves it. Host names are unique across projects
-- (their zones differ), stored lower-case without a trailing dot or a port.
-- Every change is followed by NOTIFY branchline_routes (store/routes.py): edges
-- keep the table in memory and reload it when told.
CREATE TABLE branchline.routes (
    host          text PRIMARY KEY CHECK (host <> '' AND host = lower(host)),
    project       text NOT NULL,
    environment   text NOT NULL,
    service       text NOT NULL,
    upstream_host text NOT NULL DEFAULT '127.0.0.1',
    upstream_port integer NOT NULL CHECK (upstream_port BETWEEN 1 AND 65535),
    deployment_id bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX routes_project_idx ON branchline.routes (project, environment, service);
