-- Pull requests from forks: code from another repository. Their tests run without
-- secrets, and they get a preview only once a writer approves their head commit.
ALTER TABLE branchline.pull_requests ADD COLUMN fork boolean NOT NULL DEFAULT false;

CREATE TABLE branchline.approvals (
    project     text NOT NULL,
    pr          integer NOT NULL,
    sha         text NOT NULL,      -- what was approved: a new commit needs a new approval
    approved_by text NOT NULL,
    approved_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, pr, sha)
);
