-- The attempt that delivers an event is kept in its delivery row rather than
-- as a row of `attempts`: the common case, delivered at the first try, then
-- costs no second insert. `attempts` keeps every attempt that did not deliver.
ALTER TABLE deliveries ADD COLUMN delivered_attempt INTEGER;
ALTER TABLE deliveries ADD COLUMN delivered_started_at INTEGER;
ALTER TABLE deliveries ADD COLUMN delivered_duration_ms INTEGER;
