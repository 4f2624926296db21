-- Which metrics instance counts each partition, and since when (epoch). A new owner bumps the epoch and loads
-- the partition's state in one transaction; a batch checks the epoch under a row lock, so an instance that
-- lost a partition can neither write for it nor keep stale numbers in memory.
CREATE TABLE partition_owner (
    topic       text    NOT NULL,
    part        integer NOT NULL,
    epoch       bigint  NOT NULL,
    owner       text    NOT NULL,
    next_offset bigint  NOT NULL DEFAULT 0,  -- rejections are deduplicated by offset, committed with the counts
    PRIMARY KEY (topic, part)
);

CREATE TABLE rejection_counts (
    part   integer NOT NULL,
    stage  text    NOT NULL,
    reason text    NOT NULL,
    value  bigint  NOT NULL,
    PRIMARY KEY (part, stage, reason)
);

-- The instant of receipt, for each unit's oldest open dossier.
ALTER TABLE dossier_progress ADD COLUMN received_at timestamptz;
UPDATE dossier_progress SET received_at = received_on::timestamp AT TIME ZONE 'Asia/Ho_Chi_Minh';
ALTER TABLE dossier_progress ALTER COLUMN received_at SET NOT NULL;
