-- title: Enrichment coverage per dataset and day
-- answers: What share of indexed events carries each item feature?
-- param: start_day date = today-7   first day (inclusive, UTC)
-- param: end_day date = today+1     last day (exclusive, UTC)
-- chart: line x=day y=category_coverage series=dataset
SELECT
    CAST(date_trunc('day', event_time) AS DATE) AS day,
    dataset,
    COUNT(*) AS events,
    ROUND(CAST(COUNT(category) AS DOUBLE) / COUNT(*), 4) AS category_coverage,
    ROUND(CAST(COUNT(popularity) AS DOUBLE) / COUNT(*), 4) AS popularity_coverage
FROM enriched_events
WHERE event_time >= CAST({{start_day}} AS TIMESTAMP) AND event_time < CAST({{end_day}} AS TIMESTAMP)
GROUP BY 1, 2
ORDER BY day, dataset
