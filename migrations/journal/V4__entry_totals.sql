-- The live-entry total of each user, kept by PostgreSQL itself, so a list page
-- reads one row for its `total` instead of counting the user's entries every
-- time (count(*) over 1,000 index entries was most of an uncached page's
-- database CPU; see docs/PERFORMANCE.md).
--
-- Kept by statement-level triggers over the transition tables, so every way a
-- row comes or goes counts, whoever writes it: the API's INSERT, soft delete
-- (UPDATE of deleted_at) and restore, account erasure's DELETE, a batch INSERT
-- … SELECT or COPY of many users at once (one upsert per user per statement, not
-- per row). Each statement adds its per-user delta with one INSERT … ON CONFLICT
-- DO UPDATE in the same transaction as the write: concurrent writers of one
-- user serialize on that user's row and each adds to the latest committed
-- value, so the total is exact under READ COMMITTED; the rows are upserted in
-- user_id order, so two multi-user statements cannot deadlock on each other.
-- A user whose total drops to 0 through a DELETE (erasure) loses the row: no
-- row means 0.

CREATE TABLE journal.entry_totals (
    user_id uuid   PRIMARY KEY,
    live    bigint NOT NULL
);

CREATE OR REPLACE FUNCTION journal.entry_totals_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO journal.entry_totals AS t (user_id, live)
        SELECT user_id, count(*) FROM new_rows WHERE deleted_at IS NULL
        GROUP BY user_id ORDER BY user_id
        ON CONFLICT (user_id) DO UPDATE SET live = t.live + EXCLUDED.live;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO journal.entry_totals AS t (user_id, live)
        SELECT user_id, sum(d) FROM (
            SELECT user_id, 1 AS d FROM new_rows WHERE deleted_at IS NULL
            UNION ALL
            SELECT user_id, -1 FROM old_rows WHERE deleted_at IS NULL
        ) changes
        GROUP BY user_id HAVING sum(d) <> 0 ORDER BY user_id
        ON CONFLICT (user_id) DO UPDATE SET live = t.live + EXCLUDED.live;
    ELSE -- DELETE
        INSERT INTO journal.entry_totals AS t (user_id, live)
        SELECT user_id, -count(*) FROM old_rows WHERE deleted_at IS NULL
        GROUP BY user_id ORDER BY user_id
        ON CONFLICT (user_id) DO UPDATE SET live = t.live + EXCLUDED.live;
        DELETE FROM journal.entry_totals t
        WHERE t.live <= 0 AND t.user_id IN (SELECT user_id FROM old_rows);
    END IF;
    RETURN NULL;
END;
$$;

-- Writes wait while the totals are counted, so none is missed or counted twice.
LOCK TABLE journal.journal_entries IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER journal_entries_totals_insert
    AFTER INSERT ON journal.journal_entries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION journal.entry_totals_apply();

CREATE TRIGGER journal_entries_totals_update
    AFTER UPDATE ON journal.journal_entries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION journal.entry_totals_apply();

CREATE TRIGGER journal_entries_totals_delete
    AFTER DELETE ON journal.journal_entries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION journal.entry_totals_apply();

INSERT INTO journal.entry_totals (user_id, live)
SELECT user_id, count(*) FROM journal.journal_entries WHERE deleted_at IS NULL
GROUP BY user_id;
