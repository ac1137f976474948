-- title: Real-time vs offline disagreement per day
-- answers: Per day, how many received events did the stream not index, how many indexed events
--   are duplicates, and how many rows the daily/backfill jobs rewrote?
-- param: start_day date = today-7   first day (inclusive, UTC)
-- param: end_day date = today+1     last day (exclusive, UTC)
-- chart: line x=day y=missing_in_enriched,duplicate_rows
WITH raw AS (
    SELECT DISTINCT CAST(date_trunc('day', event_time) AS DATE) AS day, event_id
    FROM raw_events
    WHERE event_time >= CAST({{start_day}} AS TIMESTAMP) AND event_time < CAST({{end_day}} AS TIMESTAMP)
),
enriched AS (
    SELECT CAST(date_trunc('day', event_time) AS DATE) AS day, event_id, COUNT(*) AS copies,
           MAX(CASE WHEN enriched_by = 'stream' THEN 0 ELSE 1 END) AS recomputed
    FROM enriched_events
    WHERE event_time >= CAST({{start_day}} AS TIMESTAMP) AND event_time < CAST({{end_day}} AS TIMESTAMP)
    GROUP BY 1, 2
)
SELECT
    COALESCE(r.day, e.day) AS day,
    COUNT(r.event_id) AS raw_events,
    COUNT(e.event_id) AS enriched_events,
    COUNT(CASE WHEN e.event_id IS NULL THEN 1 END) AS missing_in_enriched,
    COUNT(CASE WHEN r.event_id IS NULL THEN 1 END) AS not_in_raw,
    COALESCE(SUM(e.copies - 1), 0) AS duplicate_rows,
    COALESCE(SUM(e.recomputed), 0) AS recomputed_events
FROM raw r
FULL OUTER JOIN enriched e ON r.day = e.day AND r.event_id = e.event_id
GROUP BY 1
ORDER BY 1
