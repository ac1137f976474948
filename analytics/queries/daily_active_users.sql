-- title: Daily active users by event type
-- answers: How many distinct users performed each event type per day?
-- param: start_day date = today-7   first day (inclusive, UTC)
-- param: end_day date = today+1     last day (exclusive, UTC)
-- chart: line x=day y=users series=event_type
SELECT
    CAST(date_trunc('day', event_time) AS DATE) AS day,
    event_type,
    COUNT(DISTINCT user_id) AS users,
    COUNT(DISTINCT event_id) AS events
FROM raw_events
WHERE event_time >= CAST({{start_day}} AS TIMESTAMP) AND event_time < CAST({{end_day}} AS TIMESTAMP)
GROUP BY 1, 2
ORDER BY day, event_type
