-- Kai's PostgreSQL roles (SPEC §7 "Least privilege"): per service one role that
-- serves and one that migrates. Roles belong to the whole cluster: run this file
-- once per cluster (any database), then 02-database.sql in the database Kai uses.
-- Both files are idempotent: running them again changes nothing.
--
--   kai_journal, kai_conversation, kai_profile
--       the serving roles (the Deployments): CONNECT, USAGE on the service's own
--       schema, SELECT/INSERT/UPDATE/DELETE on its tables and USAGE/SELECT on its
--       sequences — no DDL, nothing of another service's schema
--   kai_journal_migrate, kai_conversation_migrate, kai_profile_migrate
--       the migration roles (the migration Jobs): each owns its service's schema
--       and what its migrations create there, nothing of another schema
--
-- The passwords below are for development only (docker compose, the dev overlay,
-- the tests): on a real cluster replace each with a generated one, or create the
-- roles without one and set it afterwards (\password kai_journal in psql), and
-- put it into that service's Secret (k8s/README.md, "Secrets").
--
-- Managed PostgreSQL (RDS, Cloud SQL, Azure): the same statements work as the
-- provider's admin role (it has CREATEROLE). 02-database.sql creates each schema
-- AUTHORIZATION its migration role and sets default privileges FOR ROLE it, which
-- a non-superuser admin may only do as a member of that role: on PostgreSQL 16+
-- the creator of a role is granted it automatically; on 15 and older run
-- `GRANT kai_journal_migrate, kai_conversation_migrate, kai_profile_migrate TO <admin>`
-- after this file.
--
-- Concurrent runs (several test processes) are safe: a role another session just
-- created is a duplicate_object or, mid-commit, a unique_violation — both mean
-- "exists".
DO $$
DECLARE
    role record;
BEGIN
    FOR role IN
        SELECT * FROM (VALUES
            ('kai_journal', 'kai-dev-journal-password'),
            ('kai_conversation', 'kai-dev-conversation-password'),
            ('kai_profile', 'kai-dev-profile-password'),
            ('kai_journal_migrate', 'kai-dev-journal-migrate-password'),
            ('kai_conversation_migrate', 'kai-dev-conversation-migrate-password'),
            ('kai_profile_migrate', 'kai-dev-profile-migrate-password')
        ) AS r(name, password)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role.name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD %L',
                    role.name, role.password);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;
