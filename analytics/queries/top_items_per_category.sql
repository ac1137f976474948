-- title: Top items per category
-- answers: Which items got the most engagement (clicks, repins, close-ups) in each category?
-- param: days integer = 7   window length, ending now
-- param: top integer = 5    items per category
WITH features AS (
    SELECT item_id, category
    FROM (
        SELECT item_id, category,
               row_number() OVER (PARTITION BY item_id ORDER BY updated_at DESC) AS version
        FROM item_features
    ) AS f
    WHERE version = 1
),
engagement AS (
    SELECT item_id, COUNT(DISTINCT event_id) AS engagements, COUNT(DISTINCT user_id) AS users
    FROM raw_events
    WHERE event_type IN ('click', 'repin', 'closeup')
      AND event_time >= current_timestamp - {{days}} * INTERVAL '1' DAY
    GROUP BY item_id
),
ranked AS (
    SELECT f.category, e.item_id, e.engagements, e.users,
           row_number() OVER (PARTITION BY f.category ORDER BY e.engagements DESC, e.item_id) AS rank
    FROM engagement e
    JOIN features f ON f.item_id = e.item_id
)
SELECT category, rank, item_id, engagements, users
FROM ranked
WHERE rank <= {{top}}
ORDER BY category, rank
