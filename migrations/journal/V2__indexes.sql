-- The indexes the hot queries need (SPEC §7). Each names the query it serves.

-- List (page and cursor mode), stats: a user's live entries, newest first;
-- `id` breaks ties so keyset pagination never skips or repeats.
CREATE INDEX journal_entries_user_created_live
    ON journal.journal_entries (user_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

-- Search: GIN over the generated title+content document.
CREATE INDEX journal_entries_search
    ON journal.journal_entries USING gin (search)
    WHERE deleted_at IS NULL;

-- Filtering by tag (the seeds' tag index).
CREATE INDEX journal_entries_tags
    ON journal.journal_entries USING gin (tags)
    WHERE deleted_at IS NULL;
