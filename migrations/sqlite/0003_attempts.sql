-- One row per delivery attempt actually made (the admin API's history),
-- written in the same transaction as the attempt's outcome and purged with
-- its delivery (explicitly: SQLite enforces no foreign key without a pragma).
CREATE TABLE attempts (
    delivery_id  INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,   -- X-Relay-Attempt of that attempt
    started_at   INTEGER NOT NULL,   -- ms since the Unix epoch
    duration_ms  INTEGER NOT NULL,
    http_status  INTEGER,            -- Accelerate's status, when it answered
    outcome      TEXT    NOT NULL,   -- delivered | http_3xx | http_4xx | http_429 | http_5xx | timeout | connect | other
    message      TEXT,               -- short, never a body or a header
    PRIMARY KEY (delivery_id, attempt)
) WITHOUT ROWID;

-- Dead deliveries are counted at every metrics scrape; this index holds only
-- dead rows, so it costs nothing on the accept and delivery path.
CREATE INDEX deliveries_dead ON deliveries (environment, received_at) WHERE status = 'dead';
