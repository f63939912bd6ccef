-- btree_gin: GIN operator classes for plain types (here uuid), so one GIN index
-- can hold a user's id beside the words of each entry (V7). A trusted extension
-- of PostgreSQL's contrib: the migration role creates it with the CREATE
-- privilege it has on the database, no superuser. In the journal's own schema,
-- which the migration role owns (public's CREATE is revoked).
CREATE EXTENSION IF NOT EXISTS btree_gin SCHEMA journal;
