-- One row per delivery attempt actually made (the admin API's history),
-- written in the same statement as the attempt's outcome and purged with its
-- delivery.
CREATE TABLE attempts (
    delivery_id  BIGINT  NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt      BIGINT  NOT NULL,   -- X-Relay-Attempt of that attempt
    started_at   BIGINT  NOT NULL,   -- ms since the Unix epoch
    duration_ms  BIGINT  NOT NULL,
    http_status  BIGINT,             -- Accelerate's status, when it answered
    outcome      TEXT    NOT NULL,   -- delivered | http_3xx | http_4xx | http_429 | http_5xx | timeout | connect | other
    message      TEXT,               -- short, never a body or a header
    PRIMARY KEY (delivery_id, attempt)
);

-- Dead deliveries are counted at every metrics scrape; this index holds only
-- dead rows, so it costs nothing on the accept and delivery path.
CREATE INDEX deliveries_dead ON deliveries (environment, received_at) WHERE status = 'dead';
