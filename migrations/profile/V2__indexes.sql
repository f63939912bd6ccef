-- The indexes the hot queries need (SPEC §7). Each names the query it serves.

-- Register and login: e-mail addresses are unique whatever their case. The name
-- is matched in code: a violation of it is a 409, not a 500.
CREATE UNIQUE INDEX users_email_lower_key ON profile.users (lower(email));

-- One session per token; lookups by token hash.
CREATE UNIQUE INDEX sessions_token_hash_key ON profile.sessions (token_hash);

-- A user's sessions (logout everywhere, cleanup of expired rows).
CREATE INDEX sessions_user_id ON profile.sessions (user_id);

-- Queries into traits (`traits @> '{"tone": "warm"}'`, `traits ? 'tone'`).
CREATE INDEX profiles_traits ON profile.profiles USING gin (traits);
