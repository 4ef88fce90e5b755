-- Console sign-ins, kept by the server so that signing out (or an operator's
-- revocation) ends a session on every replica. Expand-only: a new table that
-- earlier releases never read. The cookie carries `id` and a secret; only the
-- secret's SHA-256 is stored, so a copy of the database signs nobody in.
CREATE TABLE console_sessions (
    id          TEXT    PRIMARY KEY,  -- ses_…, shown to operators
    secret_hash TEXT    NOT NULL,     -- SHA-256 (hex) of the cookie's secret
    token_hash  TEXT    NOT NULL,     -- SHA-256 (hex) of the admin token signed in with
    peer        TEXT,                 -- client address at sign-in
    created_at  INTEGER NOT NULL,     -- ms since the Unix epoch
    expires_at  INTEGER NOT NULL,
    ended_at    INTEGER,              -- set by sign-out or revocation
    ended_by    TEXT                  -- signed-out | revoked
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
