-- Without statistics SQLite chose (status, received_at) for "pending and due",
-- scanning every pending row and sorting. Purge gets a partial index of its
-- own, so "pending" queries can only use deliveries_due.
DROP INDEX deliveries_status_received;
CREATE INDEX deliveries_delivered ON deliveries (received_at) WHERE status = 'delivered';
