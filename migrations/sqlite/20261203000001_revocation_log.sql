-- The embedded store's revocation log and per-user not-before instants: the same tables as
-- migrations/postgres, in SQLite's types (times in microseconds, ids as BLOBs). SQLite has one
-- writer at a time, so AUTOINCREMENT cursors are already in commit order.
-- Never edit this file once applied: add a new migration instead.

CREATE TABLE user_not_before (
    user_id     TEXT    PRIMARY KEY,
    not_before  INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    recorded_at INTEGER NOT NULL,
    marked      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX user_not_before_unmarked_idx ON user_not_before (user_id) WHERE NOT marked;

CREATE TABLE revocation_event (
    cursor      INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        INTEGER NOT NULL,
    session_id  BLOB,
    user_id     TEXT,
    not_before  INTEGER,
    revoked_at  INTEGER NOT NULL,
    reason      TEXT    NOT NULL DEFAULT '',
    key_id      TEXT
);
CREATE INDEX revocation_event_revoked_at_idx ON revocation_event (revoked_at);

CREATE TABLE revocation_log (
    singleton     INTEGER PRIMARY KEY DEFAULT 1 CHECK (singleton = 1),
    swept_through INTEGER NOT NULL DEFAULT 0
);
INSERT INTO revocation_log DEFAULT VALUES;

CREATE TRIGGER session_revoked_logged
    AFTER UPDATE OF revoked_at ON session
    WHEN OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM user_not_before u
        WHERE u.user_id = NEW.user_id AND u.not_before = NEW.revoked_at AND NEW.created_at < u.not_before
    )
BEGIN
    INSERT INTO revocation_event (kind, session_id, user_id, revoked_at, reason)
    VALUES (1, NEW.session_id, NEW.user_id, NEW.revoked_at, NEW.revoke_reason);
END;

CREATE TRIGGER user_not_before_inserted_logged
    AFTER INSERT ON user_not_before
BEGIN
    INSERT INTO revocation_event (kind, user_id, not_before, revoked_at, reason)
    VALUES (2, NEW.user_id, NEW.not_before, NEW.recorded_at, NEW.reason);
END;

CREATE TRIGGER user_not_before_moved_logged
    AFTER UPDATE OF not_before ON user_not_before
BEGIN
    INSERT INTO revocation_event (kind, user_id, not_before, revoked_at, reason)
    VALUES (2, NEW.user_id, NEW.not_before, NEW.recorded_at, NEW.reason);
END;

CREATE TABLE removed_signing_key (
    key_id     TEXT    PRIMARY KEY,
    removed_at INTEGER NOT NULL
);

CREATE TRIGGER removed_signing_key_logged
    AFTER INSERT ON removed_signing_key
BEGIN
    INSERT INTO revocation_event (kind, revoked_at, key_id) VALUES (3, NEW.removed_at, NEW.key_id);
END;
