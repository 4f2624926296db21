-- The current state of every dossier, as the fold of its accepted events.
CREATE TABLE dossiers (
    code        text        PRIMARY KEY,
    state       text        NOT NULL,
    unit_code   text        NOT NULL,
    snapshot    jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Every event resolution has judged, accepted or not: the dedupe record and the full history.
CREATE TABLE events (
    source       text        NOT NULL,
    event_id     text        NOT NULL,
    dossier_code text        NOT NULL,
    sequence     integer,            -- null for an event that was refused
    occurred_at  timestamptz NOT NULL,
    payload      jsonb       NOT NULL,
    refusal      text,
    recorded_at  timestamptz NOT NULL,
    PRIMARY KEY (source, event_id)
);
CREATE INDEX events_history ON events (dossier_code, occurred_at) WHERE sequence IS NOT NULL;

-- Transactional outbox: written with the state, published by the relay, deleted once Kafka has it.
CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    topic      text        NOT NULL,
    key        text,
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
