-- Applicants' contacts, sealed (AES-GCM) exactly as resolution published them; opened only to send.
CREATE TABLE contacts (
    dossier_code text PRIMARY KEY,
    sealed       text NOT NULL,
    notify_via   text[] NOT NULL
);

-- One row per message the citizen is owed: the key (dossier, event, channel) makes a repeat a no-op.
CREATE TABLE deliveries (
    dossier_code    text        NOT NULL,
    event_id        text        NOT NULL,
    channel         text        NOT NULL,
    template        text        NOT NULL,
    status          text        NOT NULL,   -- queued, sending, delivered, temporary-failure, permanent-failure
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    context         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    PRIMARY KEY (dossier_code, event_id, channel)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('queued', 'temporary-failure');
