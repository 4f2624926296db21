-- The last lifecycle event of each dossier that decided its due-soon alert: an older or repeated event
-- (redelivery, a replay) must not bring back an alert a later event cancelled. Alerts themselves are rows of
-- `deliveries` on the `webhook` channel, event_id `due_soon@<due instant>`, not sent before next_attempt_at;
-- a cancelled one has status `cancelled`.
CREATE TABLE due_alert_clocks (
    dossier_code text    PRIMARY KEY,
    sequence     integer NOT NULL
);
