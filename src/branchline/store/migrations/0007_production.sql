-- Production rollouts: the deployment history (who or what triggered it, the
-- commit, the releases, each step's duration, the outcome, what was rolled back).
CREATE TABLE branchline.rollouts (
    id           bigserial PRIMARY KEY,
    project      text NOT NULL,
    environment  text NOT NULL DEFAULT 'production',
    run_id       bigint UNIQUE REFERENCES branchline.runs (id),
    sha          text,
    triggered_by text NOT NULL,
    status       text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'success', 'failed', 'rolled_back')),
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX rollouts_project_idx ON branchline.rollouts (project, id DESC);

-- Which database branch an environment's services use, when it is not the usual
-- one: after `branchline restore`, production runs on emergency-restore-<ts>.
CREATE TABLE branchline.environment_branches (
    project     text NOT NULL,
    environment text NOT NULL,
    branch      text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, environment)
);
