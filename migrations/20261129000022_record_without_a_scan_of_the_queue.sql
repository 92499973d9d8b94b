-- Recording results and claiming never scan the whole queue.
--
-- The result write joined its batch to webhook_deliveries_queue by id. Each
-- connection plans it once (a prepared statement's generic plan, made at its
-- sixth use) from the table's size at that moment; with no statistics yet
-- (a queue never analyzed: autovacuum off, or not run yet) a connection that
-- planned it while the queue was small kept a hash join on a sequential scan
-- of the whole queue: 19 of 30 result writes sampled in the throughput
-- scenario, 16 ms for 20,682 queued rows, 50 ms a write, where a lookup by the
-- unique id key costs a few µs a row. The write is now a function that runs
-- with sequential scans off, as the claim does with bitmap scans (migration
-- 17), and the claim gets the same setting (2 of its shares' statements
-- sampled scanned the queue too). Otherwise the statement of
-- queue::store::finish_many, unchanged.
CREATE FUNCTION webhook_record_attempts(
    ids text[], tokens uuid[], statuses text[], retry_in_ms bigint[], response_statuses integer[],
    errors text[], started timestamptz[], durations integer[], kinds text[], excerpts text[])
RETURNS TABLE (delivery_id text, webhook_id text, at_rest boolean)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(ids, tokens, statuses, retry_in_ms, response_statuses,
                             errors, started, durations, kinds, excerpts)
            AS t(id, token, status, retry_in_ms, response_status, error, started_at, duration_ms,
                 error_kind, excerpt)
    ), done AS (
        -- The fence: only the lease holder's write lands.
        UPDATE webhook_deliveries d
        SET status = i.status,
            -- a finished row moves to its day of the history
            done_at = CASE WHEN i.status <> 'pending' THEN now() END,
            attempts = d.attempts + 1,
            -- the database's clock, not the service's host
            next_retry_at = COALESCE(now() + make_interval(secs => i.retry_in_ms / 1000.0),
                                     d.next_retry_at),
            lease_expires_at = NULL,
            lease_token = NULL,
            response_status = i.response_status,
            last_error = i.error,
            last_attempt_at = i.started_at
        FROM input i
        -- (status names the queue partition: by id alone, every day is searched)
        WHERE d.status = 'pending' AND d.id = i.id AND d.lease_token = i.token
        RETURNING d.id, d.webhook_id, d.attempts, i.started_at, i.duration_ms, i.response_status,
                  i.error_kind, i.error, i.excerpt
    ), logged AS (
        INSERT INTO webhook_delivery_attempts
            (delivery_id, webhook_id, attempt, started_at, duration_ms, response_status, error_kind, error, response_excerpt)
        SELECT id, webhook_id, attempts, started_at, duration_ms, response_status, error_kind, error, excerpt
        FROM done
        RETURNING delivery_id, webhook_id
    )
    -- Whether its endpoint state is at rest (closed, no failures, not
    -- FIFO), read without a lock: a success there changes nothing. Read
    -- once per webhook, not once per attempt.
    , rest AS (
        SELECT l.webhook_id,
               coalesce(s.circuit = 'closed' AND s.consecutive_failures = 0 AND w.ordering <> 'fifo', false)
                   AS at_rest
        FROM (SELECT DISTINCT webhook_id FROM logged) l
        JOIN webhooks w ON w.id = l.webhook_id
        LEFT JOIN webhook_endpoint_state s ON s.webhook_id = l.webhook_id
    )
    SELECT l.delivery_id, l.webhook_id, r.at_rest
    FROM logged l JOIN rest r ON r.webhook_id = l.webhook_id;
END $$;

ALTER FUNCTION webhook_claim(integer, double precision, text[], integer[], integer)
    SET enable_seqscan = off;
