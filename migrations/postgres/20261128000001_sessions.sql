-- Sessions and their refresh tokens. Postgres is the source of truth; Redis only caches `session`
-- rows. Never edit this file once applied: add a new migration instead.

CREATE TABLE session (
    session_id      uuid        PRIMARY KEY,                  -- UUIDv7: sorts by creation time
    user_id         text        NOT NULL,                     -- the caller's opaque user id (<= 128 bytes)
    device_id       text,                                     -- caller's stable device id; NULL = unknown device
    device_name     text        NOT NULL DEFAULT '',          -- human-readable device name
    user_agent      text        NOT NULL DEFAULT '',          -- the client's User-Agent
    ip_address      text,                                     -- the client's IPv4 or IPv6 address at sign-in
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb, -- small caller-owned string map
    created_at      timestamptz NOT NULL,
    last_seen_at    timestamptz NOT NULL,                     -- last refresh or validate, coalesced to ~1/min
    expires_at      timestamptz NOT NULL,                     -- absolute end; activity never moves it
    idle_expires_at timestamptz NOT NULL,                     -- end unless activity pushes it (<= expires_at)
    revoked_at      timestamptz,                              -- NULL while not revoked
    revoke_reason   text,                                     -- why it was revoked; NULL while not revoked
    CHECK ((revoked_at IS NULL) = (revoke_reason IS NULL))
);

-- ListUserSessions pages through one user's sessions newest first; limits and sign-outs count them.
CREATE INDEX session_user_id_idx ON session (user_id, session_id DESC);
-- The sweeper finds expired and long-revoked rows.
CREATE INDEX session_expires_at_idx ON session (expires_at);
CREATE INDEX session_idle_expires_at_idx ON session (idle_expires_at);
CREATE INDEX session_revoked_at_idx ON session (revoked_at) WHERE revoked_at IS NOT NULL;
-- At most one unrevoked session per device: a new one revokes the old one first.
CREATE UNIQUE INDEX session_one_per_device_idx ON session (user_id, device_id)
    WHERE revoked_at IS NULL AND device_id IS NOT NULL;

CREATE TABLE refresh_token (
    token_hash  bytea       PRIMARY KEY,                       -- SHA-256 of the token; the token is never stored
    session_id  uuid        NOT NULL REFERENCES session (session_id) ON DELETE CASCADE,
    generation  integer     NOT NULL,                          -- 0 for CreateSession's token, +1 per rotation
    issued_at   timestamptz NOT NULL,
    retired_at  timestamptz,                                   -- NULL while it is the session's current token
    UNIQUE (session_id, generation)
);

-- Exactly one current token per session.
CREATE UNIQUE INDEX refresh_token_current_idx ON refresh_token (session_id) WHERE retired_at IS NULL;
