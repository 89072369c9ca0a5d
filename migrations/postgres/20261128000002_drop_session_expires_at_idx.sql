-- The sweeper no longer reads session_expires_at_idx: idle_expires_at never exceeds expires_at
-- (every write caps it there), so a session past its absolute end is past its idle end too, and
-- session_idle_expires_at_idx finds it. The index cost every session insert, and every activity
-- update (which cannot be HOT, as idle_expires_at is indexed), one more index entry to write.
DROP INDEX IF EXISTS session_expires_at_idx;
