-- The format fence. Each delivery records the store format it was written
-- in; a release claims only the formats it knows, so a row a newer release
-- wrote is never sent by an older one during a rolling upgrade.
--   0: written by a release before the fence; its headers may still hold an
--      Authorization value in clear (releases before 0005 wrote those)
--   1: Authorization as a key reference; body and headers in clear
-- Rows written before this migration, and rows a release before the fence
-- writes afterwards, are 0 by the default; the relay converts them to 1 by
-- a sweep it runs every few seconds (no marker a second writer can outlive).
-- Expand-only: a column with a default and an index older releases never read.
ALTER TABLE deliveries ADD COLUMN format INTEGER NOT NULL DEFAULT 0;
CREATE INDEX deliveries_old_format ON deliveries (id) WHERE format < 1;
