-- Counter values, kept with the consumed progress so that a restart neither resets nor double counts.
-- Keyed by Kafka partition: an instance exports the partitions it owns.
CREATE TABLE counters (
    family    text    NOT NULL,
    part      integer NOT NULL,
    unit_code text    NOT NULL,
    sector    text    NOT NULL,
    channel   text    NOT NULL,
    label     text    NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (family, part, unit_code, sector, channel, label)
);

-- The latest canonical event applied per dossier: a repeat (sequence not above it) changes nothing.
CREATE TABLE dossier_progress (
    code          text        PRIMARY KEY,
    part          integer     NOT NULL,
    last_sequence integer     NOT NULL,
    unit_code     text        NOT NULL,
    sector        text        NOT NULL,
    channel       text        NOT NULL,
    open_kind     text,               -- null once completed; paused / awaiting_supplement / running
    due_at        timestamptz,
    due_soon_at   timestamptz
);
CREATE INDEX dossier_progress_open ON dossier_progress (part, unit_code) WHERE open_kind IS NOT NULL;
