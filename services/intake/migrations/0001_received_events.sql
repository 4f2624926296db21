-- Every event intake has passed on, by its CloudEvents identity: a repeat is answered as a duplicate.
CREATE TABLE received_events (
    source       text        NOT NULL,
    event_id     text        NOT NULL,
    dossier_code text        NOT NULL,
    accepted_at  timestamptz NOT NULL,
    PRIMARY KEY (source, event_id)
);

-- Daily sequences for dossier codes minted when a commune sends none (Circular 01/2018 art. 19).
CREATE TABLE code_sequences (
    agency_id text    NOT NULL,
    day       date    NOT NULL,
    last      integer NOT NULL,
    PRIMARY KEY (agency_id, day)
);
