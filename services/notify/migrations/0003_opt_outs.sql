-- Citizens who asked to hear only what the law requires about a dossier.
CREATE TABLE opt_outs (
    dossier_code text        PRIMARY KEY,
    opted_out_at timestamptz NOT NULL
);

-- Whether the law requires a message; rows from before the column existed are treated as required, so an
-- opt-out never stops a message that was owed without one.
ALTER TABLE deliveries ADD COLUMN required boolean NOT NULL DEFAULT true;
