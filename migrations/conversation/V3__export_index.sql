-- Export (GET /api/conversations/export) walks a user's conversations oldest
-- first in keyset batches: (user_id, created_at, id) serves every batch with an
-- index range scan, however many conversations the user has.
CREATE INDEX conversations_user_created
    ON conversation.conversations (user_id, created_at, id);
