-- The working-time histogram's stored counters keep each completion in its own bucket only (the smallest bound
-- at or above its ratio) instead of in every bucket at or above it: one row written per completion instead of
-- up to ten. The export adds them up into Prometheus' cumulative buckets (services/metrics/series.py). Rows
-- counted the old way become the differences between neighbouring bounds, under a family name of their own so
-- that no row is read both ways.
-- During a rolling upgrade older instances may still be counting the old way. The lock waits for their batches in
-- flight and holds new ones back until this commits, so that each group's rows are converted whole: a batch half
-- seen would have its new rows left out and its other rows' additions deleted. What older instances write after
-- this is converted when a newer instance takes their partitions over (services/metrics/store.py).
LOCK TABLE counters IN EXCLUSIVE MODE;
INSERT INTO counters (family, part, unit_code, sector, channel, label, value)
SELECT 'time_used_in_bucket', part, unit_code, sector, channel, label, own
FROM (
    SELECT part, unit_code, sector, channel, label,
           value - coalesce(lag(value) OVER (
               PARTITION BY part, unit_code, sector, channel
               ORDER BY CASE label WHEN '+Inf' THEN 'Infinity'::float8 ELSE label::float8 END), 0) AS own
    FROM counters WHERE family = 'time_used_bucket'
) AS differences
WHERE own <> 0;
DELETE FROM counters WHERE family = 'time_used_bucket';
