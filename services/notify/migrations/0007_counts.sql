-- What notify's metrics count, kept as the rows change: a scrape must not count tables that grow with every
-- message ever sent. Statement-level triggers append one row per key a statement changes, never updating a
-- row in place, so concurrent transactions never wait on each other here; the scrape sums the rows and folds
-- them into one per key now and then (services/notify/stats.py).
CREATE TABLE delivery_counts (
    channel text   NOT NULL,
    status  text   NOT NULL,
    n       bigint NOT NULL
);
CREATE TABLE survey_counts (
    unit_code text   NOT NULL,
    rating    text,            -- null: surveys offered; otherwise answers with that rating
    n         bigint NOT NULL
);

CREATE FUNCTION delivery_rows_changed() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO delivery_counts SELECT channel, status, count(*) FROM added GROUP BY 1, 2;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO delivery_counts SELECT channel, status, -count(*) FROM removed GROUP BY 1, 2;
    ELSE
        INSERT INTO delivery_counts
        SELECT channel, status, sum(n) FROM (SELECT channel, status, -1 AS n FROM removed
                                             UNION ALL SELECT channel, status, 1 FROM added) AS moved
        GROUP BY 1, 2 HAVING sum(n) <> 0;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION survey_rows_changed() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO survey_counts SELECT unit_code, NULL, count(*) FROM added GROUP BY 1
        UNION ALL SELECT unit_code, rating, count(*) FROM added WHERE rating IS NOT NULL GROUP BY 1, 2;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO survey_counts SELECT unit_code, NULL, -count(*) FROM removed GROUP BY 1
        UNION ALL SELECT unit_code, rating, -count(*) FROM removed WHERE rating IS NOT NULL GROUP BY 1, 2;
    ELSE
        INSERT INTO survey_counts
        SELECT unit_code, rating, sum(n) FROM (SELECT unit_code, rating, -1 AS n FROM removed
                                                UNION ALL SELECT unit_code, rating, 1 FROM added) AS moved
        WHERE rating IS NOT NULL GROUP BY 1, 2 HAVING sum(n) <> 0;
    END IF;
    RETURN NULL;
END $$;

-- Triggers first: each takes a lock that waits for the transactions writing the table and holds off new ones
-- until this migration commits, so the counts below and the triggers' rows never overlap or miss a row.
CREATE TRIGGER deliveries_inserted AFTER INSERT ON deliveries REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_rows_changed();
CREATE TRIGGER deliveries_updated AFTER UPDATE ON deliveries REFERENCING OLD TABLE AS removed NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_rows_changed();
CREATE TRIGGER deliveries_deleted AFTER DELETE ON deliveries REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_rows_changed();
CREATE TRIGGER surveys_inserted AFTER INSERT ON surveys REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION survey_rows_changed();
CREATE TRIGGER surveys_updated AFTER UPDATE ON surveys REFERENCING OLD TABLE AS removed NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION survey_rows_changed();
CREATE TRIGGER surveys_deleted AFTER DELETE ON surveys REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION survey_rows_changed();

INSERT INTO delivery_counts SELECT channel, status, count(*) FROM deliveries GROUP BY 1, 2;
INSERT INTO survey_counts SELECT unit_code, NULL, count(*) FROM surveys GROUP BY 1
UNION ALL SELECT unit_code, rating, count(*) FROM surveys WHERE rating IS NOT NULL GROUP BY 1, 2;
