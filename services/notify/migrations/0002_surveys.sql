-- One satisfaction survey per dossier whose result was returned (Decision 766 group 6). The unit is kept
-- so that answers are counted per unit; the comment is free text a citizen may put personal data in, so
-- it is sealed like the contacts.
CREATE TABLE surveys (
    dossier_code   text        PRIMARY KEY,
    unit_code      text        NOT NULL,
    invited_at     timestamptz NOT NULL,
    rating         text        CHECK (rating IN ('satisfied', 'neutral', 'dissatisfied')),
    comment_sealed text,
    answered_at    timestamptz,
    CHECK ((rating IS NULL) = (answered_at IS NULL))
);
