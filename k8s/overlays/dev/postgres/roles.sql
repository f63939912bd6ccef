-- The two database roles (SPEC §8: migrations run with credentials the serving
-- pods do not hold). Run once by the database owner; the same statements
-- work on a managed PostgreSQL (replace the passwords). scripts/check-observability
-- runs this file against its private PostgreSQL too.
--
--   kai_migrator  owns the schemas and tables (the migration Jobs)
--   kai_app       reads and writes rows, cannot create, alter or drop (the services)
--
-- On a managed PostgreSQL whose admin is not a superuser, that admin must be a
-- member of kai_migrator for ALTER DEFAULT PRIVILEGES FOR ROLE kai_migrator
-- (GRANT kai_migrator TO <admin>) first.
CREATE ROLE kai_migrator LOGIN PASSWORD 'kai-dev-migrator-password';
CREATE ROLE kai_app LOGIN PASSWORD 'kai-dev-app-password';
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT, CREATE ON DATABASE %I TO kai_migrator', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO kai_app', current_database());
END
$$;
-- Whatever kai_migrator creates later is usable (not alterable) by kai_app.
ALTER DEFAULT PRIVILEGES FOR ROLE kai_migrator GRANT USAGE ON SCHEMAS TO kai_app;
ALTER DEFAULT PRIVILEGES FOR ROLE kai_migrator GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO kai_app;
ALTER DEFAULT PRIVILEGES FOR ROLE kai_migrator GRANT USAGE, SELECT ON SEQUENCES TO kai_app;
