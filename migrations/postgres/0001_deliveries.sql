-- One row per accepted event: the bytes and headers to forward, and the state of its delivery.
-- Integers are BIGINT throughout so both backends decode the same row shapes.
CREATE TABLE deliveries (
    id               BIGSERIAL PRIMARY KEY,               -- never reused
    environment      TEXT    NOT NULL,
    event_id         TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    accelerate_token TEXT    NOT NULL,
    body             BYTEA   NOT NULL,                    -- exactly as received and signed
    headers          BYTEA   NOT NULL,                    -- forwarded headers, `name:value\n`
    status           TEXT    NOT NULL DEFAULT 'pending',  -- pending | delivered | dead
    attempts         BIGINT  NOT NULL DEFAULT 0,          -- attempts started, also X-Relay-Attempt
    attempts_base    BIGINT  NOT NULL DEFAULT 0,          -- attempts before the last manual retry
    next_attempt_at  BIGINT  NOT NULL,                    -- ms since the Unix epoch
    leased_until     BIGINT,                              -- set while an attempt is in flight
    last_error       TEXT,
    last_status      BIGINT,
    received_at      BIGINT  NOT NULL,
    delivered_at     BIGINT,
    UNIQUE (event_id, environment)                        -- dedupe across replicas
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_token ON deliveries (accelerate_token);
CREATE INDEX deliveries_status_received ON deliveries (status, received_at);
