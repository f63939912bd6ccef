-- kai:no-transaction
-- Search's second statement (`SEARCH_ALL_MATCHES`: a journal longer than the
-- search window whose newest entries hold too few matches) asks for one user's
-- entries holding a word. The index it had, GIN over the words alone, answers
-- with every user's entries holding that word, and PostgreSQL read and
-- discarded the others': a word this user lacks that 20,000 entries of other
-- users hold cost 30-77 ms, growing with the table, not with this journal
-- (docs/PERFORMANCE.md, "Round six"). This index keys each entry's words and its
-- user together (btree_gin, V6): PostgreSQL intersects the user's posting list
-- with the word's and reads only this user's matching rows.
--
-- Built without blocking writes; each statement runs on its own (the runner
-- splits at a `;` that ends a line). If the build fails half-way PostgreSQL
-- leaves an INVALID index of that name, and the runner refuses to run this
-- migration again until it is dropped (`DROP INDEX CONCURRENTLY
-- journal.journal_entries_user_search`), so the words-only index below is
-- never dropped beside a broken replacement.
CREATE INDEX CONCURRENTLY IF NOT EXISTS journal_entries_user_search
    ON journal.journal_entries USING gin (user_id, search)
    WHERE deleted_at IS NULL;

-- The words-only index: every search is one user's, and the index above answers
-- each of them. Dropping it takes one index's work off every insert. A replica
-- still running the previous release during a rolling update sends the same
-- statements, which the new index serves.
DROP INDEX CONCURRENTLY IF EXISTS journal.journal_entries_search;
