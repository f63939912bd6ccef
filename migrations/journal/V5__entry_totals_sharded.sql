-- A user's live total kept in up to 16 rows instead of one (V4 kept one), so
-- concurrent writers of one user stop queueing behind each other. The rows live
-- in journal.entry_total_shards (V4's table, renamed and re-keyed);
-- journal.entry_totals becomes a view with V4's shape (one row per user, the
-- sum), so a replica still running the previous release during a rolling
-- update reads an exact total with its V4 statement instead of failing on "more
-- than one row returned by a subquery".
--
-- With one row per user, every write of a user upserted that row and held its
-- lock until commit (the insert, the trigger, the WAL flush): a user's writes ran
-- one at a time. The 90/10 read/write benchmark of one user spent most of its
-- PostgreSQL time waiting on `Lock:transactionid` (docs/PERFORMANCE.md). Now each
-- statement adds its delta to the row of its own backend's shard
-- (`pg_backend_pid() % 16`): writers on different connections touch different
-- rows; statements of one transaction always touch the same row (one backend), so
-- a transaction cannot deadlock with itself, and multi-user statements still
-- upsert in (user_id, shard) order. The total is the sum of the user's rows (one
-- index range of at most 16 entries), exact under READ COMMITTED as before: each
-- delta is added to the latest committed value of its row.
--
-- A shard may go negative (an entry written through one connection and deleted
-- through another); only the sum means anything. A DELETE removes the shard rows
-- it brought to exactly 0 (the recheck of `live = 0` on the row's latest version
-- makes that safe against a concurrent writer of the same row); account erasure
-- deletes the user's rows outright (services/journal/src/erasure.rs).
--
-- Grants: the view is a table to ALTER DEFAULT PRIVILEGES (the serving role
-- reads it as it read V4's table); the renamed table keeps its own.

LOCK TABLE journal.journal_entries IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE journal.entry_totals RENAME TO entry_total_shards;
ALTER TABLE journal.entry_total_shards RENAME CONSTRAINT entry_totals_pkey TO entry_total_shards_pkey_v4;
ALTER TABLE journal.entry_total_shards ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE journal.entry_total_shards DROP CONSTRAINT entry_total_shards_pkey_v4;
ALTER TABLE journal.entry_total_shards ADD CONSTRAINT entry_total_shards_pkey PRIMARY KEY (user_id, shard);
ALTER TABLE journal.entry_total_shards ALTER COLUMN shard DROP DEFAULT;

CREATE VIEW journal.entry_totals AS
    SELECT user_id, sum(live)::bigint AS live
    FROM journal.entry_total_shards
    GROUP BY user_id;

CREATE OR REPLACE FUNCTION journal.entry_totals_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    my_shard smallint := pg_backend_pid() % 16;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO journal.entry_total_shards AS t (user_id, shard, live)
        SELECT user_id, my_shard, count(*) FROM new_rows WHERE deleted_at IS NULL
        GROUP BY user_id ORDER BY user_id
        ON CONFLICT (user_id, shard) DO UPDATE SET live = t.live + EXCLUDED.live;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO journal.entry_total_shards AS t (user_id, shard, live)
        SELECT user_id, my_shard, sum(d) FROM (
            SELECT user_id, 1 AS d FROM new_rows WHERE deleted_at IS NULL
            UNION ALL
            SELECT user_id, -1 FROM old_rows WHERE deleted_at IS NULL
        ) changes
        GROUP BY user_id HAVING sum(d) <> 0 ORDER BY user_id
        ON CONFLICT (user_id, shard) DO UPDATE SET live = t.live + EXCLUDED.live;
    ELSE -- DELETE
        INSERT INTO journal.entry_total_shards AS t (user_id, shard, live)
        SELECT user_id, my_shard, -count(*) FROM old_rows WHERE deleted_at IS NULL
        GROUP BY user_id ORDER BY user_id
        ON CONFLICT (user_id, shard) DO UPDATE SET live = t.live + EXCLUDED.live;
        DELETE FROM journal.entry_total_shards t
        WHERE t.shard = my_shard AND t.live = 0
          AND t.user_id IN (SELECT user_id FROM old_rows);
    END IF;
    RETURN NULL;
END;
$$;
