-- title: Close-up to repin funnel
-- answers: Per day, how many close-ups were followed by a repin of the same item by the same user
--   within the window, and the conversion rate?
-- param: start_day date = today-7   first day (inclusive, UTC)
-- param: end_day date = today+1     last day (exclusive, UTC)
-- param: window_minutes integer = 30   how soon after the close-up a repin counts
-- chart: line x=day y=conversion
WITH closeups AS (
    SELECT DISTINCT event_id, user_id, item_id, event_time
    FROM raw_events
    WHERE event_type = 'closeup'
      AND event_time >= CAST({{start_day}} AS TIMESTAMP) AND event_time < CAST({{end_day}} AS TIMESTAMP)
),
repins AS (
    SELECT DISTINCT event_id, user_id, item_id, event_time
    FROM raw_events
    WHERE event_type = 'repin'
      AND event_time >= CAST({{start_day}} AS TIMESTAMP)
      AND event_time < CAST({{end_day}} AS TIMESTAMP) + {{window_minutes}} * INTERVAL '1' MINUTE
),
converted AS (
    SELECT c.event_id,
           MAX(CASE WHEN r.event_id IS NOT NULL THEN 1 ELSE 0 END) AS repinned
    FROM closeups c
    LEFT JOIN repins r
      ON r.user_id = c.user_id AND r.item_id = c.item_id
     AND r.event_time >= c.event_time
     AND r.event_time <= c.event_time + {{window_minutes}} * INTERVAL '1' MINUTE
    GROUP BY c.event_id
)
SELECT
    CAST(date_trunc('day', c.event_time) AS DATE) AS day,
    COUNT(*) AS closeups,
    SUM(v.repinned) AS followed_by_repin,
    ROUND(CAST(SUM(v.repinned) AS DOUBLE) / COUNT(*), 4) AS conversion
FROM closeups c
JOIN converted v ON v.event_id = c.event_id
GROUP BY 1
ORDER BY 1
