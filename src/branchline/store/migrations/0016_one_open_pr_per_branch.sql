-- One open pull request per head branch, held by the database: two `pr open` of one
-- branch at the same moment cannot both insert (a check before the insert could not
-- stop that). The key is GitHub's own rule: one open pull request per head and base,
-- the head named with its repository (`head_repo`: '' for the base's own repository,
-- 'owner/name' for a fork), so forks' `main` or `patch-1` never meet.
ALTER TABLE branchline.pull_requests ADD COLUMN head_repo text NOT NULL DEFAULT '';

-- Forks mirrored before this column: their repository is not known, so each gets a
-- key of its own until its next delivery names it.
UPDATE branchline.pull_requests SET head_repo = '#' || number WHERE fork;

-- Duplicates the race made before: the first one opened stays open.
UPDATE branchline.pull_requests later
SET state = 'closed', closed_at = now(), updated_at = now()
WHERE later.state = 'open' AND EXISTS (
    SELECT 1 FROM branchline.pull_requests earlier
    WHERE earlier.project = later.project AND earlier.head_repo = later.head_repo
      AND earlier.head_branch = later.head_branch AND earlier.base_branch = later.base_branch
      AND earlier.state = 'open' AND earlier.number < later.number);

CREATE UNIQUE INDEX pull_requests_one_open_per_head
    ON branchline.pull_requests (project, head_repo, head_branch, base_branch)
    WHERE state = 'open';

-- GitHub's numbers start at 1 (and the column is 32-bit): a number that is not one is
-- never stored again. NOT VALID: rows a malformed delivery left before stay readable.
ALTER TABLE branchline.pull_requests ADD CONSTRAINT pull_requests_number_positive
    CHECK (number > 0) NOT VALID;
