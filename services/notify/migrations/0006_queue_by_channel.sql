-- Each provider's sender takes the oldest due messages of its own channel. Ordered by channel first, the
-- index hands it exactly those, so a round costs the same whether ten or a hundred thousand messages wait
-- (a rate-limited gateway builds such a backlog by design); by next_attempt_at alone, every round read and
-- sorted the whole backlog to take a few.
CREATE INDEX deliveries_due_by_channel ON deliveries (channel, next_attempt_at)
    WHERE status IN ('queued', 'temporary-failure');
DROP INDEX deliveries_due;
