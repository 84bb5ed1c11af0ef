-- Why a job failed, as a word code can decide on (interrupted, cancelled, refused,
-- timed_out, ...), beside the sentence people read in `error`.
ALTER TABLE branchline.jobs ADD COLUMN error_code text;
