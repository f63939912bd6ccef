-- kai:no-transaction
-- An index on an existing (live) table, built without blocking its writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS items_label ON online_test.items (label);
CREATE INDEX CONCURRENTLY IF NOT EXISTS items_id_label ON online_test.items (id, label);
