-- The delivery rounds set aside opted-out citizens' waiting messages once a second by joining this table to
-- deliveries (services/notify/delivery.py). A table never analyzed is taken for ten pages, and against such an
-- estimate the planner reads deliveries whole every second until deliveries outgrows it (~10,000 pages), while
-- autovacuum analyzes this small, rarely changed table only after fifty changes. So: statistics from the start,
-- and from autovacuum after any change.
ALTER TABLE opt_outs SET (autovacuum_analyze_threshold = 1, autovacuum_analyze_scale_factor = 0);
ANALYZE opt_outs;
