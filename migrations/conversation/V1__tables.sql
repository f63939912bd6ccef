-- conversation-service owns the `conversation` schema and nothing else.
CREATE SCHEMA IF NOT EXISTS conversation;

-- Keeps updated_at honest whatever statement changes a row.
CREATE OR REPLACE FUNCTION conversation.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- A conversation between a user and the assistant.
--
-- Deletion is a hard delete (no deleted_at): these are someone's most private
-- words, and "delete this conversation" must mean the messages are gone, not
-- hidden. It also keeps every read free of a liveness filter, and lets the
-- foreign key below remove the messages in the same statement.
CREATE TABLE conversation.conversations (
    id          uuid        PRIMARY KEY,
    -- The owner, as issued by profile-service (no cross-schema foreign key:
    -- services never touch each other's tables).
    user_id     uuid        NOT NULL,
    title       text        CONSTRAINT conversations_title_length CHECK (char_length(title) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Moved by every message, so lists show the most recently active first.
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER conversations_updated_at
    BEFORE UPDATE ON conversation.conversations
    FOR EACH ROW EXECUTE FUNCTION conversation.set_updated_at();

-- One message of a conversation: the user's, the assistant's, or a system note.
CREATE TABLE conversation.messages (
    id              uuid        PRIMARY KEY,
    conversation_id uuid        NOT NULL
                                CONSTRAINT messages_conversation_fk
                                REFERENCES conversation.conversations (id) ON DELETE CASCADE,
    role            text        NOT NULL
                                CONSTRAINT messages_role_known CHECK (role IN ('user', 'assistant', 'system')),
    content         text        NOT NULL
                                CONSTRAINT messages_content_length CHECK (char_length(content) BETWEEN 1 AND 20000),
    created_at      timestamptz NOT NULL DEFAULT now()
);
