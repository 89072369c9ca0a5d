-- Revocations as a durable, ordered log (WatchRevocations, and every replica's in-memory ledger),
-- and per-user not-before instants (RevokeUserSessions signs a user out in O(1)).
-- Never edit this file once applied: add a new migration instead. The previous release ignores
-- all of it: it neither reads these tables nor revokes by not-before, and its revocations are
-- logged by the trigger below all the same.

-- A user's sign-out everywhere: every session of user_id created before not_before is revoked,
-- whether or not its row says so yet (rows are marked in batches afterwards).
CREATE TABLE user_not_before (
    user_id     text        PRIMARY KEY,
    not_before  timestamptz NOT NULL,         -- only ever moves forward
    reason      text        NOT NULL,         -- the revoke_reason its sessions get
    recorded_at timestamptz NOT NULL,         -- when the sign-out was made
    marked      boolean     NOT NULL DEFAULT false  -- every session before not_before says revoked
);
CREATE INDEX user_not_before_unmarked_idx ON user_not_before (user_id) WHERE NOT marked;

-- Every revocation, in commit order, kept for as long as the access tokens it refuses may live.
CREATE TABLE revocation_event (
    cursor      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- commit order (see below)
    kind        smallint    NOT NULL,         -- 1 session, 2 user not-before, 3 signing key removed
    session_id  uuid,                         -- kind 1
    user_id     text,                         -- kinds 1 and 2
    not_before  timestamptz,                  -- kind 2
    revoked_at  timestamptz NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    key_id      text                          -- kind 3
);
CREATE INDEX revocation_event_revoked_at_idx ON revocation_event (revoked_at);

-- The highest cursor the sweeper has deleted: a subscriber resuming below it has missed events.
CREATE TABLE revocation_log (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    swept_through bigint  NOT NULL DEFAULT 0
);
INSERT INTO revocation_log DEFAULT VALUES;

-- Appends one event. Cursors must be handed out in commit order, or a subscriber that has read
-- cursor 11 would never see a cursor 10 that commits after it: each event is appended under one
-- transaction-level advisory lock ("sesrevlg"), and appended only at commit (the triggers below are
-- deferred), so the lock is the last a transaction takes (no deadlock) and is released only after
-- its commit is visible, before the next appender takes a cursor.
CREATE FUNCTION append_revocation_event(
    kind smallint, session_id uuid, user_id text, not_before timestamptz, revoked_at timestamptz,
    reason text, key_id text
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(8315179222175214695);
    INSERT INTO revocation_event (kind, session_id, user_id, not_before, revoked_at, reason, key_id)
    VALUES (kind, session_id, user_id, not_before, revoked_at, reason, key_id);
END $$;

-- A session revoked by any statement, of this release or another, is logged; except a row marked
-- by its user's not-before (revoked_at = not_before), which that one event already covers.
CREATE FUNCTION log_session_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM user_not_before u
        WHERE u.user_id = NEW.user_id AND u.not_before = NEW.revoked_at AND NEW.created_at < u.not_before
    ) THEN
        PERFORM append_revocation_event(1::smallint, NEW.session_id, NEW.user_id, NULL,
            NEW.revoked_at, NEW.revoke_reason, NULL);
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER session_revoked_logged
    AFTER UPDATE OF revoked_at ON session DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION log_session_revoked();

CREATE FUNCTION log_user_not_before() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM append_revocation_event(2::smallint, NULL, NEW.user_id, NEW.not_before,
        NEW.recorded_at, NEW.reason, NULL);
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER user_not_before_logged
    AFTER INSERT OR UPDATE OF not_before ON user_not_before DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION log_user_not_before();

-- Signing keys a replica saw removed from its key files: the first replica to see one logs it.
CREATE TABLE removed_signing_key (
    key_id     text        PRIMARY KEY,
    removed_at timestamptz NOT NULL
);

CREATE FUNCTION log_signing_key_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM append_revocation_event(3::smallint, NULL, NULL, NULL, NEW.removed_at, '', NEW.key_id);
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER removed_signing_key_logged
    AFTER INSERT ON removed_signing_key DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION log_signing_key_removed();
