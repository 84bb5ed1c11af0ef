-- Where a job's checkout lives (a branchline-job-* directory on its worker's host):
-- recovery removes it when the worker died, gc removes those no live job owns.
ALTER TABLE branchline.jobs ADD COLUMN checkout text;

-- Old runs are deleted after their retention period: a rollout's record (the
-- deployment history) outlives its run, and a rerun outlives the run it repeated.
ALTER TABLE branchline.rollouts DROP CONSTRAINT IF EXISTS rollouts_run_id_fkey;
ALTER TABLE branchline.rollouts ADD CONSTRAINT rollouts_run_id_fkey
    FOREIGN KEY (run_id) REFERENCES branchline.runs (id) ON DELETE SET NULL;
ALTER TABLE branchline.runs DROP CONSTRAINT IF EXISTS runs_rerun_of_fkey;
ALTER TABLE branchline.runs ADD CONSTRAINT runs_rerun_of_fkey
    FOREIGN KEY (rerun_of) REFERENCES branchline.runs (id) ON DELETE SET NULL;

CREATE INDEX runs_finished_idx ON branchline.runs (project, finished_at);
-- Deleting a run deletes its logs by run_id (the run index serves), its jobs' and
-- steps' logs by job_id and step_id: without these each delete scans every log row.
CREATE INDEX log_chunks_job_idx ON branchline.log_chunks (job_id);
CREATE INDEX log_chunks_step_idx ON branchline.log_chunks (step_id);
CREATE INDEX artifacts_run_idx ON branchline.artifacts (run_id);
