-- Replays by time range, kept by the store so that a restart resumes one and
-- (on PostgreSQL) any replica carries it on. Expand-only: a new table that
-- earlier releases never read. A replay walks the matching deliveries oldest
-- first; (cursor_at, cursor_id) is where it has got to.
CREATE TABLE replays (
    id              INTEGER PRIMARY KEY AUTOINCREMENT, -- rpl_<id>, never reused
    environment     TEXT    NOT NULL,
    received_after  INTEGER NOT NULL,                  -- ms since the Unix epoch, inclusive
    received_before INTEGER NOT NULL,                  -- exclusive, at most the creation time
    statuses        TEXT    NOT NULL,                  -- comma-separated: pending,delivered,dead
    state           TEXT    NOT NULL DEFAULT 'running', -- running | done | cancelled
    matched         INTEGER NOT NULL,                  -- deliveries that matched when it was made
    queued          INTEGER NOT NULL DEFAULT 0,        -- made pending and due so far
    cursor_at       INTEGER NOT NULL,
    cursor_id       INTEGER NOT NULL DEFAULT 0,
    next_step_at    INTEGER NOT NULL,                  -- paces the fleet: one step a second
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER,
    actor           TEXT    NOT NULL                   -- api, cli or the console session
);
CREATE INDEX replays_running ON replays (next_step_at) WHERE state = 'running';
