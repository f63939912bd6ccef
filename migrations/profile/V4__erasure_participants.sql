-- The services an account erasure waits for. Not written in code: every service
-- that holds a person's data consumes the 'account-erased' stream in a consumer
-- group of its own name, and the outbox relay adds each group it finds on the
-- stream (XINFO GROUPS) here. Kept in PostgreSQL because Redis may lose its data
-- (and its groups) while a service is down: a service, once seen, is awaited by
-- every later erasure until an operator removes it here (retiring a service:
-- DELETE its row, and array_remove it from profile.outbox.awaiting).
CREATE TABLE profile.erasure_participants (
    name       text        CONSTRAINT erasure_participants_pkey PRIMARY KEY,
    first_seen timestamptz NOT NULL DEFAULT now()
);

-- The services that held data when this table replaced the list in code, so an
-- erasure right after the upgrade waits for them before they have re-registered.
INSERT INTO profile.erasure_participants (name) VALUES ('profile'), ('journal'), ('conversation');
