-- Reporting: per-webhook health, hourly volume, failure reasons, the due
-- backlog. Functions take the window start (and optionally one webhook) so
-- Grafana/Metabase can pass their time range; views give fixed windows for psql.

-- Attempts carry their webhook and whether they succeeded, so health needs no
-- join through deliveries and the indexes below can answer it directly.
ALTER TABLE webhook_delivery_attempts ADD COLUMN webhook_id text;
UPDATE webhook_delivery_attempts a SET webhook_id = d.webhook_id
FROM webhook_deliveries d WHERE d.id = a.delivery_id;
ALTER TABLE webhook_delivery_attempts ALTER COLUMN webhook_id SET NOT NULL;
ALTER TABLE webhook_delivery_attempts
    ADD COLUMN succeeded boolean GENERATED ALWAYS AS (coalesce(response_status BETWEEN 200 AND 299, false)) STORED;

-- Index budget: every attempt inserts into each index of this table, and
-- every claim and result touches each index of webhook_deliveries, so the
-- hot path pays for them. Windows over all rows use BRIN indexes (rows arrive
-- in time order; a BRIN index costs almost nothing to maintain); per-webhook
-- lookups use one B-tree each, and failures get partial indexes that only
-- failures pay for.
CREATE INDEX webhook_delivery_attempts_started_brin ON webhook_delivery_attempts USING brin (started_at);
CREATE INDEX webhook_deliveries_created_brin ON webhook_deliveries USING brin (created_at);
-- One webhook's window, and its last success (a backward scan that stops at
-- the first successful attempt).
CREATE INDEX webhook_delivery_attempts_webhook_idx
    ON webhook_delivery_attempts (webhook_id, started_at) INCLUDE (duration_ms, succeeded);
-- Last failure and consecutive failures per webhook.
CREATE INDEX webhook_delivery_attempts_failures_idx
    ON webhook_delivery_attempts (webhook_id, started_at DESC) WHERE NOT succeeded;
-- Failure reasons and recent failures across all webhooks over a window.
CREATE INDEX webhook_delivery_attempts_recent_failures_idx
    ON webhook_delivery_attempts (started_at DESC) WHERE NOT succeeded;

-- Per-webhook health since `since`. success_rate = success / (success + failed)
-- among deliveries created in the window; retry_rate = deliveries that needed
-- more than one attempt / deliveries attempted; p50/p95 over attempts started
-- in the window. last_*_at and consecutive_failures (failed attempts since the
-- last successful one) cover the whole retained history.
CREATE FUNCTION webhook_health(since timestamptz, only_webhook text DEFAULT NULL)
RETURNS TABLE (
    webhook_id text, url text, active boolean,
    deliveries bigint, success bigint, pending bigint, failed bigint,
    success_rate double precision, retry_rate double precision,
    p50_ms double precision, p95_ms double precision,
    last_success_at timestamptz, last_failure_at timestamptz, consecutive_failures bigint
) LANGUAGE sql STABLE AS $$
    WITH d AS (
        SELECT d.webhook_id,
               count(*) AS deliveries,
               count(*) FILTER (WHERE d.status = 'success') AS success,
               count(*) FILTER (WHERE d.status = 'pending') AS pending,
               count(*) FILTER (WHERE d.status = 'failed') AS failed,
               count(*) FILTER (WHERE d.attempts > 1) AS retried,
               count(*) FILTER (WHERE d.attempts >= 1) AS attempted
        FROM webhook_deliveries d
        WHERE d.created_at >= since AND (only_webhook IS NULL OR d.webhook_id = only_webhook)
        GROUP BY d.webhook_id
    ), a AS (
        SELECT a.webhook_id,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY a.duration_ms) AS p50,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms) AS p95
        FROM webhook_delivery_attempts a
        WHERE a.started_at >= since AND (only_webhook IS NULL OR a.webhook_id = only_webhook)
        GROUP BY a.webhook_id
    )
    SELECT w.id, w.url, w.active,
           coalesce(d.deliveries, 0), coalesce(d.success, 0), coalesce(d.pending, 0), coalesce(d.failed, 0),
           d.success::float8 / nullif(d.success + d.failed, 0),
           d.retried::float8 / nullif(d.attempted, 0),
           a.p50, a.p95,
           ls.at, lf.at, coalesce(cf.n, 0)
    FROM webhooks w
    LEFT JOIN d ON d.webhook_id = w.id
    LEFT JOIN a ON a.webhook_id = w.id
    LEFT JOIN LATERAL (SELECT max(x.started_at) AS at FROM webhook_delivery_attempts x
                       WHERE x.webhook_id = w.id AND x.succeeded) ls ON true
    LEFT JOIN LATERAL (SELECT max(x.started_at) AS at FROM webhook_delivery_attempts x
                       WHERE x.webhook_id = w.id AND NOT x.succeeded) lf ON true
    LEFT JOIN LATERAL (SELECT count(*) AS n FROM webhook_delivery_attempts x
                       WHERE x.webhook_id = w.id AND NOT x.succeeded
                         AND x.started_at > coalesce(ls.at, '-infinity')) cf ON true
    WHERE only_webhook IS NULL OR w.id = only_webhook
$$;

-- Totals over the window (the same definitions, all webhooks or one).
CREATE FUNCTION webhook_delivery_totals(since timestamptz, only_webhook text DEFAULT NULL)
RETURNS TABLE (
    deliveries bigint, success bigint, pending bigint, failed bigint, attempts bigint,
    success_rate double precision, retry_rate double precision,
    p50_ms double precision, p95_ms double precision
) LANGUAGE sql STABLE AS $$
    WITH d AS (
        SELECT count(*) AS deliveries,
               count(*) FILTER (WHERE status = 'success') AS success,
               count(*) FILTER (WHERE status = 'pending') AS pending,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE attempts > 1) AS retried,
               count(*) FILTER (WHERE attempts >= 1) AS attempted
        FROM webhook_deliveries
        WHERE created_at >= since AND (only_webhook IS NULL OR webhook_id = only_webhook)
    ), a AS (
        SELECT count(*) AS attempts,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95
        FROM webhook_delivery_attempts
        WHERE started_at >= since AND (only_webhook IS NULL OR webhook_id = only_webhook)
    )
    SELECT d.deliveries, d.success, d.pending, d.failed, a.attempts,
           d.success::float8 / nullif(d.success + d.failed, 0),
           d.retried::float8 / nullif(d.attempted, 0),
           a.p50, a.p95
    FROM d, a
$$;

-- Deliveries created per hour, by their current status.
CREATE FUNCTION webhook_delivery_volume(since timestamptz, only_webhook text DEFAULT NULL)
RETURNS TABLE (hour timestamptz, success bigint, pending bigint, failed bigint)
LANGUAGE sql STABLE AS $$
    SELECT date_trunc('hour', created_at),
           count(*) FILTER (WHERE status = 'success'),
           count(*) FILTER (WHERE status = 'pending'),
           count(*) FILTER (WHERE status = 'failed')
    FROM webhook_deliveries
    WHERE created_at >= since AND (only_webhook IS NULL OR webhook_id = only_webhook)
    GROUP BY 1
    ORDER BY 1
$$;

-- Why attempts failed: the HTTP status, or the transport error kind.
CREATE FUNCTION webhook_failure_reasons(since timestamptz, only_webhook text DEFAULT NULL)
RETURNS TABLE (reason text, error_kind text, response_status integer, count bigint, last_seen_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN response_status IS NOT NULL THEN 'HTTP ' || response_status ELSE error_kind END,
           error_kind, response_status, count(*), max(started_at)
    FROM webhook_delivery_attempts
    WHERE NOT succeeded AND started_at >= since AND (only_webhook IS NULL OR webhook_id = only_webhook)
    GROUP BY 1, 2, 3
    ORDER BY 4 DESC, 1
$$;

-- The latest failed attempts.
CREATE FUNCTION webhook_recent_failures(since timestamptz, only_webhook text DEFAULT NULL, max_rows integer DEFAULT 20)
RETURNS TABLE (webhook_id text, delivery_id text, event text, attempt integer,
               started_at timestamptz, response_status integer, error text)
LANGUAGE sql STABLE AS $$
    SELECT a.webhook_id, a.delivery_id, d.event_type, a.attempt, a.started_at, a.response_status, a.error
    FROM webhook_delivery_attempts a
    JOIN webhook_deliveries d ON d.id = a.delivery_id
    WHERE NOT a.succeeded AND a.started_at >= since AND (only_webhook IS NULL OR a.webhook_id = only_webhook)
    ORDER BY a.started_at DESC
    LIMIT max_rows
$$;

-- Fixed-window views for psql and dashboards without parameters.
CREATE VIEW webhook_health_24h AS SELECT * FROM webhook_health(now() - interval '24 hours');
CREATE VIEW webhook_failure_reasons_24h AS SELECT * FROM webhook_failure_reasons(now() - interval '24 hours');
CREATE VIEW webhook_delivery_volume_hourly AS
    SELECT date_trunc('hour', created_at) AS hour, webhook_id, status, count(*) AS deliveries
    FROM webhook_deliveries
    GROUP BY 1, 2, 3;
-- What is due now and how long the oldest due delivery has waited
-- (webhook_deliveries_due_idx). Leased (in-flight) rows are not due.
CREATE VIEW webhook_due_backlog AS
    SELECT count(*) AS due,
           extract(epoch FROM now() - min(next_retry_at))::float8 AS oldest_due_age_seconds
    FROM webhook_deliveries
    WHERE status = 'pending' AND next_retry_at <= now();
