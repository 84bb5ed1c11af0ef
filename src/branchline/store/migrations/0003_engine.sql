-- The workflow engine: what a worker needs to run a job of a run on any machine.

-- The workflow as submitted (jobs, steps, conditions), so any worker can run it.
ALTER TABLE branchline.runs ADD COLUMN definition jsonb NOT NULL DEFAULT '{}'::jsonb;
-- The git repository the run's commands check out (a path on the workers).
ALTER TABLE branchline.runs ADD COLUMN repo text;
ALTER TABLE branchline.runs ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
-- Secret names whose values the run may use (values never stored here).
ALTER TABLE branchline.runs ADD COLUMN secret_scope text;
ALTER TABLE branchline.runs ADD COLUMN rerun_of bigint REFERENCES branchline.runs (id);

ALTER TABLE branchline.jobs ADD COLUMN attempt integer NOT NULL DEFAULT 0;
ALTER TABLE branchline.jobs ADD COLUMN error text;
ALTER TABLE branchline.jobs ADD COLUMN worker text;
ALTER TABLE branchline.jobs ADD COLUMN enqueued_at timestamptz;

-- The running step's process group and host, so recovery can kill it after a crash.
ALTER TABLE branchline.steps ADD COLUMN pgid integer;
ALTER TABLE branchline.steps ADD COLUMN host text;

-- Sensitive artifact values (a DATABASE_URL) are never shown by the CLI or API.
ALTER TABLE branchline.artifacts ADD COLUMN sensitive boolean NOT NULL DEFAULT false;
ALTER TABLE branchline.artifacts ADD COLUMN project text;
ALTER TABLE branchline.artifacts ADD COLUMN workflow text;
ALTER TABLE branchline.artifacts ADD COLUMN sha text;

CREATE INDEX jobs_run_idx ON branchline.jobs (run_id);
CREATE INDEX steps_job_idx ON branchline.steps (job_id, position);
CREATE INDEX artifacts_lookup_idx ON branchline.artifacts (project, name, created_at DESC);
