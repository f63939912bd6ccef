-- The transactional outbox: an event other services must hear (today: an
-- account was erased) is written in the same transaction as the change that
-- causes it, so it can never be lost or sent for a change that rolled back.
-- profile-service relays each row to a Redis Stream and re-sends it until every
-- service named in `awaiting` has acknowledged it; then the row is deleted.
-- Redis is only the transport: if it loses its data, this table still knows.
CREATE TABLE profile.outbox (
    id          uuid        CONSTRAINT outbox_pkey PRIMARY KEY,
    -- The stream it is published on, e.g. 'account-erased'.
    topic       text        NOT NULL,
    -- For 'account-erased': the erased user's id (the least that lets each
    -- service find their data; gone once every service acknowledged).
    payload     text        NOT NULL,
    -- Consumer groups (services) that have not acknowledged it yet.
    awaiting    text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Last time it was put on the stream, and how many times.
    sent_at     timestamptz,
    sends       integer     NOT NULL DEFAULT 0
);

-- The relay's scan for rows due (re-)sending, oldest first.
CREATE INDEX outbox_created ON profile.outbox (created_at);
