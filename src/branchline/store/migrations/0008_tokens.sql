-- API tokens: only a SHA-256 of each is kept; the token is shown once, when made.
CREATE TABLE branchline.tokens (
    id          bigserial PRIMARY KEY,
    project     text NOT NULL,
    name        text NOT NULL,
    scope       text NOT NULL CHECK (scope IN ('read', 'write')),
    token_hash  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    UNIQUE (project, name)
);
