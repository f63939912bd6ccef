-- profile-service owns the `profile` schema and nothing else: accounts, the
-- profile that shapes how the assistant speaks, and login sessions.
CREATE SCHEMA IF NOT EXISTS profile;

-- Keeps updated_at honest whatever statement changes a row.
CREATE OR REPLACE FUNCTION profile.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE profile.users (
    id             uuid        CONSTRAINT users_pkey PRIMARY KEY,
    -- Stored as given; uniqueness is case-insensitive (users_email_lower_key, V2).
    email          text        NOT NULL
                               CONSTRAINT users_email_length CHECK (char_length(email) BETWEEN 3 AND 254),
    -- An argon2id PHC string ($argon2id$v=19$...); never the password.
    password_hash  text        NOT NULL
                               CONSTRAINT users_password_hash_argon2id CHECK (password_hash LIKE '$argon2id$%'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE profile.profiles (
    user_id              uuid        CONSTRAINT profiles_pkey PRIMARY KEY
                                     CONSTRAINT profiles_user_fkey REFERENCES profile.users (id) ON DELETE CASCADE,
    display_name         text        CONSTRAINT profiles_display_name_length CHECK (char_length(display_name) BETWEEN 1 AND 100),
    -- Free-form, but always JSON objects: clients index into them by key.
    traits               jsonb       NOT NULL DEFAULT '{}'
                                     CONSTRAINT profiles_traits_object CHECK (jsonb_typeof(traits) = 'object'),
    preferences          jsonb       NOT NULL DEFAULT '{}'
                                     CONSTRAINT profiles_preferences_object CHECK (jsonb_typeof(preferences) = 'object'),
    communication_style  text        CONSTRAINT profiles_communication_style_length CHECK (char_length(communication_style) <= 200),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- One row per login. The token itself is never stored: only its SHA-256, so a
-- leaked table cannot be replayed as bearer tokens.
CREATE TABLE profile.sessions (
    id          uuid        CONSTRAINT sessions_pkey PRIMARY KEY,
    user_id     uuid        NOT NULL
                            CONSTRAINT sessions_user_fkey REFERENCES profile.users (id) ON DELETE CASCADE,
    token_hash  text        NOT NULL
                            CONSTRAINT sessions_token_hash_sha256_hex CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    -- Set by logout; a revoked session never becomes valid again.
    revoked_at  timestamptz
);

CREATE TRIGGER users_updated_at
    BEFORE UPDATE ON profile.users
    FOR EACH ROW EXECUTE FUNCTION profile.set_updated_at();

CREATE TRIGGER profiles_updated_at
    BEFORE UPDATE ON profile.profiles
    FOR EACH ROW EXECUTE FUNCTION profile.set_updated_at();
