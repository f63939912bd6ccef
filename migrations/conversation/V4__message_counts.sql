-- Each conversation's message count, kept by PostgreSQL itself, so the list and
-- the detail read one row per conversation for `message_count` instead of
-- counting the conversation's messages every time (a count(*) in a LATERAL: an
-- index-only scan of every message, 55-62 ms per statement for a conversation of
-- 100,000 messages; docs/PERFORMANCE.md, "Cost as data grows").
--
-- Kept as journal keeps its entry totals (migrations/journal/V4__entry_totals.sql):
-- statement-level triggers over the transition tables, so every way a message
-- comes or goes counts, whatever writes it: the API's INSERTs (this release's
-- binaries and the previous release's, which still count(*) and never read this
-- table), a batch INSERT … SELECT or COPY over many conversations (one upsert
-- per conversation per statement, not per row), and the DELETE that a
-- conversation's deletion or an account's erasure cascades to its messages
-- (ON DELETE CASCADE runs one DELETE per conversation; its statement trigger
-- fires). Each statement adds its per-conversation delta with one
-- INSERT … ON CONFLICT DO UPDATE in the same transaction as the write, to the
-- latest committed value (exact under READ COMMITTED), in conversation_id order
-- (two multi-conversation statements cannot deadlock on each other).
--
-- One row per conversation, not journal V5's 16 shards per key: every writer of
-- a conversation's messages already holds the conversation's own row until it
-- commits (APPEND_MESSAGE and the batch's TOUCH_OWNED move its updated_at first),
-- so writers of one conversation queue there, before this row; the count row
-- adds no wait of its own, and one row keeps deletion exact: a conversation
-- whose messages all go (its deletion, erasure) drops to 0 and loses its row.
-- No row means 0 (a conversation without messages has none).
--
-- Lock: writers of messages (and deletions of conversations, which cascade to
-- them) wait while the triggers are created and the existing messages counted,
-- so none is missed or counted twice; reads go on. The wait is at most the
-- runner's lock_timeout (5 s) to get the lock, then the count (about a second
-- per few million messages, through messages_conversation_created).
--
-- Grants: the serving role reads and writes the new table (its triggers run
-- with the writer's privileges) through the migration role's default
-- privileges (k8s/postgres/02-database.sql).

CREATE TABLE conversation.message_counts (
    conversation_id uuid   PRIMARY KEY,
    messages        bigint NOT NULL
);

CREATE FUNCTION conversation.message_counts_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO conversation.message_counts AS t (conversation_id, messages)
        SELECT conversation_id, count(*) FROM new_rows
        GROUP BY conversation_id ORDER BY conversation_id
        ON CONFLICT (conversation_id) DO UPDATE SET messages = t.messages + EXCLUDED.messages;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Only a message moved to another conversation changes a count.
        INSERT INTO conversation.message_counts AS t (conversation_id, messages)
        SELECT conversation_id, sum(d) FROM (
            SELECT conversation_id, 1 AS d FROM new_rows
            UNION ALL
            SELECT conversation_id, -1 FROM old_rows
        ) changes
        GROUP BY conversation_id HAVING sum(d) <> 0 ORDER BY conversation_id
        ON CONFLICT (conversation_id) DO UPDATE SET messages = t.messages + EXCLUDED.messages;
        DELETE FROM conversation.message_counts t
        WHERE t.messages <= 0 AND t.conversation_id IN (SELECT conversation_id FROM old_rows);
    ELSE -- DELETE
        INSERT INTO conversation.message_counts AS t (conversation_id, messages)
        SELECT conversation_id, -count(*) FROM old_rows
        GROUP BY conversation_id ORDER BY conversation_id
        ON CONFLICT (conversation_id) DO UPDATE SET messages = t.messages + EXCLUDED.messages;
        DELETE FROM conversation.message_counts t
        WHERE t.messages <= 0 AND t.conversation_id IN (SELECT conversation_id FROM old_rows);
    END IF;
    RETURN NULL;
END;
$$;

LOCK TABLE conversation.messages IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER messages_counts_insert
    AFTER INSERT ON conversation.messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION conversation.message_counts_apply();

CREATE TRIGGER messages_counts_update
    AFTER UPDATE ON conversation.messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION conversation.message_counts_apply();

CREATE TRIGGER messages_counts_delete
    AFTER DELETE ON conversation.messages
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION conversation.message_counts_apply();

INSERT INTO conversation.message_counts (conversation_id, messages)
SELECT conversation_id, count(*) FROM conversation.messages
GROUP BY conversation_id;
