-- Seeds :count sessions (default run: 10 million) into an already migrated sessiond database, in
-- batches of :batch rows, each batch its own transaction. Run it through
-- crates/sessiond-bench/seed.sh, which creates and migrates the database first and times the whole
-- thing:
--
--   psql -h 127.0.0.1 -U postgres -d sessiond_bench_10m -v count=10000000 -v batch=1000000 -f crates/sessiond-bench/seed.sql
--
-- Shape of the data:
--   * session_id: UUIDv7-like (48-bit millisecond timestamp, version 7, random rest), created over
--     the last 6 days in increasing order, as a live sessiond would have written them;
--   * user_id: 'user-<n>' with n uniform over :users users (default 2 million, so ~5 sessions each);
--   * every session live: expires 30 days after creation, idle-expires 7 days after last_seen_at,
--     which lies between creation and now;
--   * one current refresh_token row per session (generation 0) whose hash is 32 random bytes.
--
-- Secondary indexes are dropped for the load and rebuilt after it (same definitions as
-- migrations/postgres/20261128000001_sessions.sql), and foreign keys are not checked during the load
-- (session_replication_role = replica; needs a superuser, which the local postgres role is).

\set ON_ERROR_STOP on
\if :{?count}
\else
  \set count 10000000
\endif
\if :{?batch}
\else
  \set batch 1000000
\endif
\if :{?users}
\else
  \set users 2000000
\endif
\timing on

-- A UUIDv7 for time `ts`: a v4 uuid with its first 48 bits replaced by the Unix time in
-- milliseconds, and its version nibble turned from 4 (0100) into 7 (0111).
CREATE OR REPLACE FUNCTION pg_temp.uuid_v7_at(ts timestamptz) RETURNS uuid
LANGUAGE sql VOLATILE AS $$
  SELECT encode(
    set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              PLACING substring(int8send(floor(extract(epoch FROM ts) * 1000)::bigint) FROM 3)
              FROM 1 FOR 6),
      52, 1), 53, 1),
    'hex')::uuid
$$;

DROP INDEX IF EXISTS session_user_id_idx;
DROP INDEX IF EXISTS session_idle_expires_at_idx;
DROP INDEX IF EXISTS session_revoked_at_idx;
DROP INDEX IF EXISTS session_one_per_device_idx;
DROP INDEX IF EXISTS refresh_token_current_idx;

SET session_replication_role = replica;
SET synchronous_commit = off;
SET maintenance_work_mem = '512MB';

SELECT now() AS seed_now, :count::bigint AS count, :batch::bigint AS batch \gset

-- One statement per batch: psql's \gexec runs each generated INSERT in its own transaction.
-- Session i (0-based) is created at seed_now - 6 days + i * (6 days / count), so ids grow with i.
SELECT format($f$
  WITH s AS (
    SELECT pg_temp.uuid_v7_at(c) AS session_id,
           'user-' || floor(random() * %3$s)::bigint AS user_id,
           'device-' || i AS device_id,
           c AS created_at,
           c + random() * (%4$L::timestamptz - c) AS last_seen_at
      FROM generate_series(%1$s::bigint, %2$s::bigint) AS i,
           LATERAL (SELECT %4$L::timestamptz - interval '6 days'
                           + (interval '6 days' / %5$s) * i AS c) AS t
  ), ins AS (
    INSERT INTO session (session_id, user_id, device_id, device_name, user_agent, ip_address,
                         metadata, created_at, last_seen_at, expires_at, idle_expires_at)
    SELECT session_id, user_id, device_id, 'seeded device', 'sessiond-bench-seed/1.0', '203.0.113.7',
           '{"app": "seed"}'::jsonb, created_at, last_seen_at, created_at + interval '30 days',
           least(last_seen_at + interval '7 days', created_at + interval '30 days')
      FROM s
    RETURNING session_id, last_seen_at
  )
  INSERT INTO refresh_token (token_hash, session_id, generation, issued_at, retired_at)
  SELECT uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()), session_id, 0, last_seen_at, NULL
    FROM ins
$f$, lo, least(lo + :batch - 1, :count - 1), :users, :'seed_now', :count)
FROM generate_series(0::bigint, :count - 1, :batch) AS lo
\gexec

SET session_replication_role = origin;

-- The indexes the migrations leave (20261128000001_sessions.sql, less the one that
-- 20261128000002 drops), rebuilt in one pass each.
CREATE INDEX session_user_id_idx ON session (user_id, session_id DESC);
CREATE INDEX session_idle_expires_at_idx ON session (idle_expires_at);
CREATE INDEX session_revoked_at_idx ON session (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE UNIQUE INDEX session_one_per_device_idx ON session (user_id, device_id)
    WHERE revoked_at IS NULL AND device_id IS NOT NULL;
CREATE UNIQUE INDEX refresh_token_current_idx ON refresh_token (session_id) WHERE retired_at IS NULL;

ANALYZE session;
ANALYZE refresh_token;

SELECT count(*) AS sessions, count(DISTINCT user_id) AS users FROM session;
SELECT pg_size_pretty(pg_database_size(current_database())) AS database_size;
