-- Kai's schemas and grants in one database: run connected to the database Kai
-- uses (psql -d kai -f 02-database.sql), as its owner or an admin, after
-- 01-roles.sql. Idempotent. What it sets up (SPEC §7 "Least privilege"):
--
--   * nobody but the six roles (and the admin) may connect: PUBLIC loses CONNECT
--     and TEMPORARY on the database and CREATE on schema public;
--   * each migration role may connect and create (its migrations' first
--     statement is `CREATE SCHEMA IF NOT EXISTS <schema>`, which PostgreSQL
--     checks against the database's CREATE privilege even when the schema exists)
--     and OWNS its schema, created here so no other role can take the name first;
--   * each serving role may connect and use its own schema only, and — through
--     default privileges of its migration role IN that schema — reads and writes
--     the rows of every table (the migration history its readiness reads
--     included) and uses the sequences its migrations create: no DDL, since
--     only an owner may create, alter or drop in a schema;
--   * a role gets nothing in another service's schema: no USAGE, so even a table
--     granted by mistake stays out of reach.
--
-- Tables a migration created before this file ran (an install of the older two
-- roles, kai_migrator and kai_app): hand them over first, per schema —
-- `ALTER SCHEMA journal OWNER TO kai_journal_migrate`, then `ALTER TABLE … OWNER
-- TO kai_journal_migrate` for each of its tables, views and functions — and run
-- this file; its GRANT … ON ALL TABLES covers what exists.
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO kai_journal, kai_conversation, kai_profile',
        current_database());
    EXECUTE format('GRANT CONNECT, CREATE ON DATABASE %I TO kai_journal_migrate, '
        'kai_conversation_migrate, kai_profile_migrate', current_database());
END
$$;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

CREATE SCHEMA IF NOT EXISTS journal AUTHORIZATION kai_journal_migrate;
GRANT USAGE ON SCHEMA journal TO kai_journal;
ALTER DEFAULT PRIVILEGES FOR ROLE kai_journal_migrate IN SCHEMA journal
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO kai_journal;
ALTER DEFAULT PRIVILEGES FOR ROLE kai_journal_migrate IN SCHEMA journal
    GRANT USAGE, SELECT ON SEQUENCES TO kai_journal;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA journal TO kai_journal;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA journal TO kai_journal;

CREATE SCHEMA IF NOT EXISTS conversation AUTHORIZATION kai_conversation_migrate;
GRANT USAGE ON SCHEMA conversation TO kai_conversation;
ALTER DEFAULT PRIVILEGES FOR ROLE kai_conversation_migrate IN SCHEMA conversation
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO kai_conversation;
ALTER DEFAULT PRIVILEGES FOR ROLE kai_conversation_migrate IN SCHEMA conversation
    GRANT USAGE, SELECT ON SEQUENCES TO kai_conversation;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA conversation TO kai_conversation;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA conversation TO kai_conversation;

CREATE SCHEMA IF NOT EXISTS profile AUTHORIZATION kai_profile_migrate;
GRANT USAGE ON SCHEMA profile TO kai_profile;
ALTER DEFAULT PRIVILEGES FOR ROLE kai_profile_migrate IN SCHEMA profile
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO kai_profile;
ALTER DEFAULT PRIVILEGES FOR ROLE kai_profile_migrate IN SCHEMA profile
    GRANT USAGE, SELECT ON SEQUENCES TO kai_profile;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA profile TO kai_profile;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA profile TO kai_profile;
