-- Delivery control, one row per environment, shared by every replica: an
-- operator's pause, the breaker (consecutive failed attempts, when it
-- opened, when the fleet's next probe may go), Accelerate's Retry-After,
-- and the pace (the fleet's next free attempt slot): a new table, and the
-- due index by environment (below).
CREATE TABLE environment_controls (
    environment       TEXT    PRIMARY KEY,
    paused_at         INTEGER,                      -- ms since the Unix epoch; NULL: not paused
    paused_by         TEXT,                    -- api, cli or the console session
    failures          INTEGER NOT NULL DEFAULT 0,   -- consecutive failed attempts, fleet-wide
    breaker_opened_at INTEGER,                      -- ms; NULL: closed
    probe_at          INTEGER,                      -- ms: the next probe may start then
    held_until        INTEGER,                      -- ms: no attempt before (Retry-After)
    pace_us           INTEGER NOT NULL DEFAULT 0    -- µs: the fleet's next free attempt slot
);
INSERT INTO environment_controls (environment) VALUES ('sandbox'), ('production');
-- Claims go per environment (one may be paused, paced or open while the
-- other flows), each a range of this index. It replaces deliveries_due
-- here: one relay process serves an SQLite file, so no older release reads
-- it meanwhile, and one more index on every event's rows cost a page
-- written per commit (bench/README.md). An older release rolled back to
-- still claims correctly, over this index and a sort of the pending rows.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due_by_environment ON deliveries (environment, next_attempt_at)
    WHERE status = 'pending';
