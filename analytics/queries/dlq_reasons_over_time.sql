-- title: Dead-letter reasons over time
-- answers: How many records were rejected per hour, by reason?
-- param: hours integer = 48   window length, ending now
-- chart: line x=hour y=records series=reason
SELECT
    date_trunc('hour', received_at) AS hour,
    reason,
    COUNT(*) AS records
FROM dead_letters
WHERE received_at >= current_timestamp - {{hours}} * INTERVAL '1' HOUR
GROUP BY 1, 2
ORDER BY hour, reason
