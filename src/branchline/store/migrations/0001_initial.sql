-- branchline's control-plane state. Everything lives in the `branchline`
-- schema so that a shared Postgres (BRANCHLINE_DATABASE_URL) stays tidy.
-- Rows that belong to one project carry its name: one state database can
-- serve several projects.

CREATE TABLE branchline.projects (
    name        text PRIMARY KEY,
    root        text NOT NULL,
    config_path text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now()
);

-- Every push, pull_request, workflow or manual trigger; processed exactly once.
CREATE TABLE branchline.events (
    id           bigserial PRIMARY KEY,
    project      text NOT NULL,
    delivery_id  text NOT NULL UNIQUE,
    kind         text NOT NULL,
    action       text,
    source       text NOT NULL CHECK (source IN ('webhook', 'cli', 'hook', 'api', 'pipeline')),
    payload      jsonb NOT NULL DEFAULT '{}'::jsonb,
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz
);

CREATE TABLE branchline.runs (
    id                bigserial PRIMARY KEY,
    project           text NOT NULL,
    workflow          text NOT NULL,
    event_id          bigint REFERENCES branchline.events (id),
    triggered_by      text NOT NULL,
    ref               text,
    sha               text,
    base_sha          text,
    pr                integer,
    concurrency_group text,
    cancel_in_progress boolean NOT NULL DEFAULT false,
    status            text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'waiting', 'running', 'success', 'failure', 'cancelled')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz
);
CREATE INDEX runs_group_idx ON branchline.runs (project, concurrency_group, created_at);

CREATE TABLE branchline.jobs (
    id          bigserial PRIMARY KEY,
    run_id      bigint NOT NULL REFERENCES branchline.runs (id) ON DELETE CASCADE,
    name        text NOT NULL,
    needs       text[] NOT NULL DEFAULT '{}',
    run_if      text NOT NULL DEFAULT 'success' CHECK (run_if IN ('success', 'always', 'failure')),
    status      text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'queued', 'running', 'success', 'failure', 'cancelled', 'skipped')),
    task_id     bigint,
    started_at  timestamptz,
    finished_at timestamptz,
    UNIQUE (run_id, name)
);

CREATE TABLE branchline.steps (
    id          bigserial PRIMARY KEY,
    job_id      bigint NOT NULL REFERENCES branchline.jobs (id) ON DELETE CASCADE,
    position    integer NOT NULL,
    name        text NOT NULL,
    status      text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'success', 'failure', 'cancelled', 'skipped')),
    exit_code   integer,
    started_at  timestamptz,
    finished_at timestamptz,
    UNIQUE (job_id, position)
);

-- Masked before they are stored: no secret value ever reaches this table.
CREATE TABLE branchline.log_chunks (
    id      bigserial PRIMARY KEY,
    run_id  bigint NOT NULL REFERENCES branchline.runs (id) ON DELETE CASCADE,
    job_id  bigint REFERENCES branchline.jobs (id) ON DELETE CASCADE,
    step_id bigint REFERENCES branchline.steps (id) ON DELETE CASCADE,
    stream  text NOT NULL CHECK (stream IN ('stdout', 'stderr', 'system')),
    content text NOT NULL,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX log_chunks_run_idx ON branchline.log_chunks (run_id, id);

CREATE TABLE branchline.artifacts (
    id         bigserial PRIMARY KEY,
    run_id     bigint NOT NULL REFERENCES branchline.runs (id) ON DELETE CASCADE,
    name       text NOT NULL,
    value      text,
    file_path  text,
    size_bytes bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    UNIQUE (run_id, name)
);
CREATE INDEX artifacts_expiry_idx ON branchline.artifacts (expires_at);

CREATE TABLE branchline.environments (
    project    text NOT NULL,
    name       text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('production', 'preview', 'local')),
    pr         integer,
    branch     text,
    status     text NOT NULL DEFAULT 'creating'
        CHECK (status IN ('creating', 'ready', 'failed', 'deleting', 'deleted')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    PRIMARY KEY (project, name)
);

CREATE TABLE branchline.branches (
    project    text NOT NULL,
    name       text NOT NULL,
    parent     text,
    provider   text NOT NULL,
    status     text NOT NULL DEFAULT 'creating'
        CHECK (status IN ('creating', 'ready', 'failed', 'deleting', 'deleted')),
    port       integer,
    size_bytes bigint,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    PRIMARY KEY (project, name)
);

CREATE TABLE branchline.releases (
    id           bigserial PRIMARY KEY,
    project      text NOT NULL,
    service      text NOT NULL,
    commit_sha   text NOT NULL,
    build_number integer NOT NULL DEFAULT 1,
    location     text,
    status       text NOT NULL DEFAULT 'building'
        CHECK (status IN ('building', 'ready', 'failed', 'pruned')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project, service, commit_sha, build_number)
);

CREATE TABLE branchline.deployments (
    id          bigserial PRIMARY KEY,
    project     text NOT NULL,
    service     text NOT NULL,
    environment text NOT NULL,
    release_id  bigint NOT NULL REFERENCES branchline.releases (id),
    status      text NOT NULL DEFAULT 'starting'
        CHECK (status IN ('starting', 'live', 'draining', 'stopped', 'failed', 'rolled_back')),
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deployments_env_idx ON branchline.deployments (project, environment, service, id);

CREATE TABLE branchline.dns_records (
    id          bigserial PRIMARY KEY,
    project     text NOT NULL,
    name        text NOT NULL,
    type        text NOT NULL,
    content     text NOT NULL,
    proxied     boolean NOT NULL DEFAULT false,
    provider_id text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project, name, type)
);

-- Ciphertext only: values are sealed with AES-GCM before they reach the store.
CREATE TABLE branchline.secrets (
    project     text NOT NULL,
    environment text NOT NULL,
    name        text NOT NULL,
    nonce       bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, environment, name)
);

-- The intent log: written before a provider creates or deletes anything, so
-- that reconcile can finish or undo whatever a crash interrupted.
CREATE TABLE branchline.resources (
    id          bigserial PRIMARY KEY,
    project     text NOT NULL,
    kind        text NOT NULL,
    name        text NOT NULL,
    environment text,
    state       text NOT NULL CHECK (state IN ('creating', 'ready', 'deleting', 'deleted', 'failed')),
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project, kind, name)
);

-- The local code host: pull requests, comments, issues and commit statuses.
CREATE TABLE branchline.pull_requests (
    project     text NOT NULL,
    number      integer NOT NULL,
    title       text NOT NULL,
    head_branch text NOT NULL,
    base_branch text NOT NULL,
    head_sha    text NOT NULL,
    state       text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed', 'merged')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    closed_at   timestamptz,
    PRIMARY KEY (project, number)
);

CREATE TABLE branchline.comments (
    id         bigserial PRIMARY KEY,
    project    text NOT NULL,
    pr         integer NOT NULL,
    key        text NOT NULL,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project, pr, key),
    FOREIGN KEY (project, pr) REFERENCES branchline.pull_requests (project, number)
);

CREATE TABLE branchline.issues (
    project    text NOT NULL,
    number     integer NOT NULL,
    title      text NOT NULL,
    body       text NOT NULL,
    labels     text[] NOT NULL DEFAULT '{}',
    state      text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, number)
);

CREATE TABLE branchline.statuses (
    project     text NOT NULL,
    sha         text NOT NULL,
    context     text NOT NULL,
    state       text NOT NULL CHECK (state IN ('pending', 'success', 'failure', 'error')),
    url         text,
    description text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, sha, context)
);
