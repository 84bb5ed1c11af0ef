-- Secrets: which key sealed each value (so that a wrong key is named, not a bare
-- authentication failure), and whether branchline generated it (preview values).
ALTER TABLE branchline.secrets ADD COLUMN key_id text NOT NULL DEFAULT '';
ALTER TABLE branchline.secrets ADD COLUMN generated boolean NOT NULL DEFAULT false;
