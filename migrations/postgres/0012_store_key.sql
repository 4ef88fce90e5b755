-- Card holder data sealed at rest (RELAY_STORE_KEY). A new format:
--   2: body and headers sealed (AES-256-GCM) with the store key whose
--      id `sealed_by` holds (16 hex digits, a hash of the key, never the key)
-- Rows of formats 0 and 1 have `sealed_by` NULL: in clear. With a key set,
-- the relay seals them by a sweep (the same path converts a clear store and
-- what an older replica keeps writing during a rolling upgrade), and moves
-- rows of an older key to the first one after a rotation. Each row sits in
-- exactly one of the two indexes, so each sweep reads only what it converts.
-- Expand-only: a nullable column and indexes older releases never read; the
-- fence (0011) keeps an older release from claiming a format-2 row.
ALTER TABLE deliveries ADD COLUMN sealed_by TEXT;
CREATE INDEX deliveries_clear ON deliveries (id) WHERE sealed_by IS NULL;
CREATE INDEX deliveries_sealed_by ON deliveries (sealed_by, id) WHERE sealed_by IS NOT NULL;
