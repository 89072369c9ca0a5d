-- The embedded store's schema: the same tables as migrations/postgres, in SQLite's types.
-- Times are INTEGER microseconds since the Unix epoch; ids and hashes are BLOBs.
-- Never edit this file once applied: add a new migration instead.

CREATE TABLE session (
    session_id      BLOB    PRIMARY KEY,                -- UUIDv7 (16 bytes): sorts by creation time
    user_id         TEXT    NOT NULL,                   -- the caller's opaque user id (<= 128 bytes)
    device_id       TEXT,                               -- caller's stable device id; NULL = unknown device
    device_name     TEXT    NOT NULL DEFAULT '',        -- human-readable device name
    user_agent      TEXT    NOT NULL DEFAULT '',        -- the client's User-Agent
    ip_address      TEXT,                               -- the client's IPv4 or IPv6 address at sign-in
    metadata        TEXT    NOT NULL DEFAULT '{}',      -- small caller-owned string map, as JSON
    created_at      INTEGER NOT NULL,
    last_seen_at    INTEGER NOT NULL,                   -- last refresh or validate, coalesced to ~1/min
    expires_at      INTEGER NOT NULL,                   -- absolute end; activity never moves it
    idle_expires_at INTEGER NOT NULL,                   -- end unless activity pushes it (<= expires_at)
    revoked_at      INTEGER,                            -- NULL while not revoked
    revoke_reason   TEXT,                               -- why it was revoked; NULL while not revoked
    CHECK ((revoked_at IS NULL) = (revoke_reason IS NULL))
);

CREATE INDEX session_user_id_idx ON session (user_id, session_id DESC);
CREATE INDEX session_expires_at_idx ON session (expires_at);
CREATE INDEX session_idle_expires_at_idx ON session (idle_expires_at);
CREATE INDEX session_revoked_at_idx ON session (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE UNIQUE INDEX session_one_per_device_idx ON session (user_id, device_id)
    WHERE revoked_at IS NULL AND device_id IS NOT NULL;

CREATE TABLE refresh_token (
    token_hash  BLOB    PRIMARY KEY,                    -- SHA-256 of the token; the token is never stored
    session_id  BLOB    NOT NULL REFERENCES session (session_id) ON DELETE CASCADE,
    generation  INTEGER NOT NULL,                       -- 0 for CreateSession's token, +1 per rotation
    issued_at   INTEGER NOT NULL,
    retired_at  INTEGER,                                -- NULL while it is the session's current token
    UNIQUE (session_id, generation)
);

CREATE UNIQUE INDEX refresh_token_current_idx ON refresh_token (session_id) WHERE retired_at IS NULL;
