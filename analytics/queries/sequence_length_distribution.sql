-- title: Sequence length distribution per dataset
-- answers: How many events per user does each dataset hold over the window (before the last-N cut)?
-- param: days integer = 30   window length, ending now
-- chart: bar x=dataset y=p50,p90,p99
WITH per_user AS (
    SELECT dataset, user_id, COUNT(DISTINCT event_id) AS n
    FROM enriched_events
    WHERE event_time >= current_timestamp - {{days}} * INTERVAL '1' DAY
    GROUP BY 1, 2
)
SELECT
    dataset,
    COUNT(*) AS users,
    MIN(n) AS min_events,
    approx_percentile(n, 0.5) AS p50,
    approx_percentile(n, 0.9) AS p90,
    approx_percentile(n, 0.99) AS p99,
    MAX(n) AS max_events,
    ROUND(AVG(n), 2) AS mean_events
FROM per_user
GROUP BY dataset
ORDER BY dataset
