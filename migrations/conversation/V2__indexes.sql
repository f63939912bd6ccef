-- The indexes the hot queries need (SPEC §7). Each names the query it serves.

-- List: a user's conversations, most recently updated first; `id` breaks ties
-- so keyset pagination over (updated_at, id) never skips or repeats.
CREATE INDEX conversations_user_updated
    ON conversation.conversations (user_id, updated_at DESC, id DESC);

-- Detail (latest N messages), and the list's per-conversation message count and
-- last message (LATERAL lookups); also serves the foreign key's cascade.
CREATE INDEX messages_conversation_created
    ON conversation.messages (conversation_id, created_at DESC, id DESC);

-- Full-text search over conversation titles.
CREATE INDEX conversations_title_search
    ON conversation.conversations USING gin (to_tsvector('english', coalesce(title, '')));
