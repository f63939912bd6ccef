-- One canonical e-mail address per account (SPEC §4, abuse limits): NFKC, a full
-- Unicode case fold, trimmed, no trailing dot of the domain — computed by
-- profile-service (src/email.rs), the same function the login limiter and the
-- lookup use, and unique. `lower(email)` (V2) folded `İ`, `ß` and fullwidth or
-- NFD forms differently from the service, so variants of a taken address were
-- new accounts. `email` keeps the address as the user typed it (trimmed).
ALTER TABLE profile.users ADD COLUMN email_key text;

-- Existing rows in printable ASCII: for them the canonical form is exactly
-- lower() without trailing dots (NFKC changes no ASCII, the full fold of ASCII is
-- lower-case). Where variants already share a key, the oldest account keeps it;
-- the others stay without one (they cannot log in until an operator resolves
-- them; profile-service logs them at start). Rows with other characters are
-- keyed by profile-service at start with the Rust function itself: SQL has no
-- full case fold.
UPDATE profile.users u SET email_key = k.key
FROM (
    SELECT id, key, row_number() OVER (PARTITION BY key ORDER BY created_at, id) AS n
    FROM (
        SELECT id, created_at, rtrim(lower(email), '.') AS key
        FROM profile.users
        WHERE email ~ '^[!-~]+$'
    ) ascii
) k
WHERE u.id = k.id AND k.n = 1;

-- Its indexes are built concurrently, outside a transaction, by V6: the table
-- is live (every login reads it).
