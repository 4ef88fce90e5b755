-- Deliveries now store which configured Authorization key they arrived with
-- (a key reference, see src/verify.rs), never the key. Rows written before
-- still hold the value in `headers`; the relay converts them at its next start
-- (it needs the configured keys for that) and then deletes this marker.
CREATE TABLE conversions (name TEXT PRIMARY KEY);
INSERT INTO conversions (name) VALUES ('authorization_key_refs');
