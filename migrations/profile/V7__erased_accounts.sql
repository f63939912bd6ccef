-- Erased accounts, kept as long as a token issued before the erasure could
-- live: the erasure is a user-wide revocation, and this row is its truth when
-- Redis lost the revoked set (profile-service re-writes the set from here and
-- from profile.sessions). Deleted once the tokens have expired.
-- (profile.erasure_participants is no longer read: the services an erasure
-- waits for are a fixed list in code, not the groups found on the stream.)
CREATE TABLE profile.erased_accounts (
    user_id          uuid        CONSTRAINT erased_accounts_pkey PRIMARY KEY,
    erased_at        timestamptz NOT NULL,
    tokens_expire_at timestamptz NOT NULL
);
