-- Account erasure hard-deletes a user's soft-deleted entries too. The live ones
-- are found through journal_entries_user_created_live; this partial index finds
-- the (few) soft-deleted ones without a sequential scan.
CREATE INDEX journal_entries_user_deleted
    ON journal.journal_entries (user_id)
    WHERE deleted_at IS NOT NULL;
