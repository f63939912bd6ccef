-- kai:no-transaction
-- V5's key, unique, built without blocking the table's writes (registrations,
-- logins' session rows go elsewhere but `users` takes password changes). Each
-- statement runs on its own (the runner splits at a `;` that ends a line). If a
-- build fails half-way, PostgreSQL leaves an INVALID index of that name: drop it
-- (`DROP INDEX CONCURRENTLY profile.users_email_key_key`) before the Job retries.

-- Register and login. The name is matched in code: a violation is a 409.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_key_key ON profile.users (email_key);

-- The rows profile-service keys at start (few; none once keyed).
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_key_missing ON profile.users (id) WHERE email_key IS NULL;
