-- Preview environments, one row per pull request that ever had one: what the
-- preview pipeline made and when, so that `max_live` and the TTL can be enforced
-- and cleanup knows what to remove even if the preview never finished.
CREATE TABLE branchline.previews (
    project     text NOT NULL,
    pr          integer NOT NULL,
    status      text NOT NULL
        CHECK (status IN ('creating', 'live', 'failed', 'deleting', 'deleted')),
    sha         text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (project, pr)
);

-- Runs are looked up by the event that started them (exactly-once dispatch).
CREATE INDEX runs_event_idx ON branchline.runs (event_id) WHERE event_id IS NOT NULL;
CREATE INDEX events_pending_idx ON branchline.events (project, id) WHERE processed_at IS NULL;

-- Why an event started nothing (a bad payload, an unknown branch), for `pr show`.
ALTER TABLE branchline.events ADD COLUMN error text;
