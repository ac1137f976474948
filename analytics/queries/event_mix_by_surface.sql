-- title: Event-type mix per surface
-- answers: On each surface, what share of events is each event type?
-- param: start_day date = today-7   first day (inclusive, UTC)
-- param: end_day date = today+1     last day (exclusive, UTC)
-- chart: bar x=surface y=share series=event_type
WITH counts AS (
    SELECT COALESCE(surface, '(none)') AS surface, event_type, COUNT(DISTINCT event_id) AS events
    FROM raw_events
    WHERE event_time >= CAST({{start_day}} AS TIMESTAMP) AND event_time < CAST({{end_day}} AS TIMESTAMP)
    GROUP BY 1, 2
)
SELECT
    surface,
    event_type,
    events,
    ROUND(CAST(events AS DOUBLE) / SUM(events) OVER (PARTITION BY surface), 4) AS share
FROM counts
ORDER BY surface, events DESC, event_type
