-- One row per accepted event: the bytes and headers to forward, and the state of its delivery.
CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused, even after a purge
    environment      TEXT    NOT NULL,
    event_id         TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    accelerate_token TEXT    NOT NULL,
    body             BLOB    NOT NULL,                   -- exactly as received and signed
    headers          BLOB    NOT NULL,                   -- forwarded headers, `name:value\n`
    status           TEXT    NOT NULL DEFAULT 'pending', -- pending | delivered | dead
    attempts         INTEGER NOT NULL DEFAULT 0,         -- attempts started, also X-Relay-Attempt
    attempts_base    INTEGER NOT NULL DEFAULT 0,         -- attempts before the last manual retry
    next_attempt_at  INTEGER NOT NULL,                   -- ms since the Unix epoch
    leased_until     INTEGER,                            -- set while an attempt is in flight
    last_error       TEXT,
    last_status      INTEGER,
    received_at      INTEGER NOT NULL,
    delivered_at     INTEGER,
    UNIQUE (event_id, environment)                       -- dedupe; also serves lookups by event id
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_token ON deliveries (accelerate_token);
CREATE INDEX deliveries_status_received ON deliveries (status, received_at);
