-- A deployment being stopped says so before its processes are signalled: the
-- supervisor restarts only live deployments, so a service that takes a while to
-- shut down is never started again behind cleanup's back, and a stop interrupted
-- half-way is finished by reconcile.
ALTER TABLE branchline.deployments DROP CONSTRAINT deployments_status_check;
ALTER TABLE branchline.deployments ADD CONSTRAINT deployments_status_check
    CHECK (status IN ('starting', 'live', 'draining', 'stopping', 'stopped', 'failed',
                      'rolled_back'));

-- Who or what asked a run to stop ("`branchline runs cancel` by alice", "run 42 for
-- a newer commit", "pull request 8 closed"): every step it stops says so.
ALTER TABLE branchline.runs ADD COLUMN cancelled_by text;
