-- title: End-to-end indexing lag percentiles
-- answers: How long after the event did the stream index it (indexed_at - event_time), per hour?
-- param: hours integer = 24   window length, ending now
-- chart: line x=hour y=p50_ms,p90_ms,p99_ms
WITH lag AS (
    SELECT date_trunc('hour', event_time) AS hour,
           CAST(date_diff('millisecond', event_time, indexed_at) AS DOUBLE) AS lag_ms
    FROM enriched_events
    WHERE enriched_by = 'stream'
      AND event_time >= current_timestamp - {{hours}} * INTERVAL '1' HOUR
)
SELECT
    hour,
    COUNT(*) AS events,
    ROUND(approx_percentile(lag_ms, 0.5), 1) AS p50_ms,
    ROUND(approx_percentile(lag_ms, 0.9), 1) AS p90_ms,
    ROUND(approx_percentile(lag_ms, 0.99), 1) AS p99_ms,
    MAX(lag_ms) AS max_ms
FROM lag
GROUP BY hour
ORDER BY hour
