-- Support looks payments up by Checkout.com's payment id (`data.id`), now
-- stored at accept time; rows written before (or by an earlier release
-- during a rolling upgrade) have none. Expand-only: a column earlier
-- releases never read, and indexes.
ALTER TABLE deliveries ADD COLUMN payment_id TEXT;
CREATE INDEX deliveries_payment ON deliveries (payment_id) WHERE payment_id IS NOT NULL;
-- Listings are newest first by (received_at, id): one index for listings
-- without a status and one per status, so each first page and each time
-- range is a range of an index, never a scan and a sort.
CREATE INDEX deliveries_received ON deliveries (received_at, id);
CREATE INDEX deliveries_pending_received ON deliveries (received_at, id) WHERE status = 'pending';
CREATE INDEX deliveries_dead_received ON deliveries (received_at, id) WHERE status = 'dead';
CREATE INDEX deliveries_delivered_received ON deliveries (received_at, id) WHERE status = 'delivered';
