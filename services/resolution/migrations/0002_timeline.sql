-- A dossier's timeline, one row per accepted event, kept beside its snapshot instead of inside it: the snapshot
-- is rewritten on every event, and with the timeline in it each write grew with the dossier's history
-- (about 175 bytes an event: a third of the snapshot's bytes by the third event).
-- `sequence` is the entry's place in the dossier's fold: a late event refolds the history and rewrites them.
CREATE TABLE timeline (
    dossier_code text        NOT NULL,
    sequence     integer     NOT NULL,
    event_type   text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    state        text        NOT NULL,
    due_at       timestamptz,
    clock_change text,
    PRIMARY KEY (dossier_code, sequence)
);

INSERT INTO timeline (dossier_code, sequence, event_type, occurred_at, state, due_at, clock_change)
SELECT d.code, (entry->>'sequence')::integer, entry->>'event_type', (entry->>'occurred_at')::timestamptz,
       entry->>'state', (entry->>'due_at')::timestamptz, entry->>'clock_change'
FROM dossiers d, jsonb_array_elements(d.snapshot->'timeline') AS entry
WHERE jsonb_typeof(d.snapshot->'timeline') = 'array';

UPDATE dossiers SET snapshot = snapshot - 'timeline' WHERE snapshot ? 'timeline';
