-- API keys of commune systems. Only a digest of the secret is kept; the key is shown once, at creation.
CREATE TABLE api_keys (
    key_id      text        PRIMARY KEY,     -- the public part of the key, for look-up and audit
    source      text        NOT NULL,        -- the CloudEvents source this key speaks for
    units       text[]      NOT NULL,        -- the units whose dossiers it may speak for
    digest      bytea       NOT NULL,        -- SHA-256 of the secret part
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX api_keys_source ON api_keys (source) WHERE revoked_at IS NULL;

-- The unit each dossier was received at, so that later events are checked against the sender's units.
CREATE TABLE dossier_units (
    dossier_code text PRIMARY KEY,
    unit_code    text NOT NULL
);

-- Every refusal of an authentication or authorisation check.
CREATE TABLE auth_audit (
    id         bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL,
    key_id     text,
    source     text,
    reason     text        NOT NULL,
    detail     text        NOT NULL,
    event_id   text,
    subject    text
);
