-- journal-service owns the `journal` schema and nothing else.
CREATE SCHEMA IF NOT EXISTS journal;

-- Keeps updated_at honest whatever statement changes a row.
CREATE OR REPLACE FUNCTION journal.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE journal.journal_entries (
    id          uuid        PRIMARY KEY,
    -- The owner, as issued by profile-service (no cross-schema foreign key:
    -- services never touch each other's tables).
    user_id     uuid        NOT NULL,
    title       text        CONSTRAINT journal_entries_title_length CHECK (char_length(title) <= 200),
    content     text        NOT NULL
                            CONSTRAINT journal_entries_content_length CHECK (char_length(content) BETWEEN 1 AND 20000),
    mood        smallint    CONSTRAINT journal_entries_mood_range CHECK (mood BETWEEN 1 AND 10),
    tags        text[]      NOT NULL DEFAULT '{}'
                            CONSTRAINT journal_entries_tags_count CHECK (cardinality(tags) <= 20),
    -- Full-text document over title and content, kept by PostgreSQL itself.
    search      tsvector    GENERATED ALWAYS AS (
                                setweight(to_tsvector('english', coalesce(title, '')), 'A') ||
                                setweight(to_tsvector('english', content), 'B')
                            ) STORED,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Soft delete: a deleted entry is gone from every read.
    deleted_at  timestamptz
);

CREATE TRIGGER journal_entries_updated_at
    BEFORE UPDATE ON journal.journal_entries
    FOR EACH ROW EXECUTE FUNCTION journal.set_updated_at();
