-- Lean storage, step 2: a bounded fan-out. One sweep transaction writes at
-- most `budget` deliveries (WEBHOOK_FANOUT_CHUNK), so an event to 100,000
-- webhooks fans out in chunks, each committed (and sent) while the next is
-- written; and an event whose fan-out keeps failing is set aside instead of
-- blocking every event behind it.

ALTER TABLE webhook_events
    -- While an event's fan-out is under way: the last webhook (in id order)
    -- it has a delivery for. The next chunk starts after it.
    ADD COLUMN fanned_out_to text,
    -- Failed fan-out attempts in a row, the last error, and when the event
    -- was set aside (it is then skipped until retried by hand).
    ADD COLUMN fan_out_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN fan_out_error text,
    ADD COLUMN set_aside_at timestamptz;

-- The sweep reads undispatched events that are not set aside, oldest first.
DROP INDEX webhook_events_undispatched_idx;
CREATE INDEX webhook_events_undispatched_idx ON webhook_events (id)
    WHERE dispatched_at IS NULL AND set_aside_at IS NULL;
-- /stats, /metrics and the hand retry read the set-aside ones.
CREATE INDEX webhook_events_set_aside_idx ON webhook_events (id)
    WHERE dispatched_at IS NULL AND set_aside_at IS NOT NULL;

-- The webhooks one event goes to, in webhook id order after `after`, at most
-- `lim` (NULL: all): the subscription test of webhook_fan_out (migration 13)
-- for one event. The HTTP intake counts with it the deliveries an event it
-- leaves to the sweep will get.
CREATE FUNCTION webhook_targets(e webhook_events, after text, lim integer)
RETURNS TABLE (webhook_id text, ordering text) LANGUAGE sql STABLE AS $$
    SELECT t.id, t.ordering FROM (
        SELECT w.id, w.ordering FROM webhooks w
        WHERE w.active AND w.filter IS NULL AND w.id > coalesce(after, '')
          AND w.events && webhook_patterns_for(e.event_type)
        UNION ALL
        SELECT w.id, w.ordering FROM webhooks w
        WHERE w.active AND w.filter IS NOT NULL AND w.id > coalesce(after, '')
          AND webhook_filter_terms(w.filter) && webhook_data_terms(e.data)
          AND w.events && webhook_patterns_for(e.event_type)
          AND webhook_filter_matches(w.filter, e.data)
    ) t
    ORDER BY t.id
    LIMIT lim
$$;

-- The sweep: claims up to `max_events` undispatched events, oldest first
-- (FOR UPDATE SKIP LOCKED: each event is fanned out by one transaction at a
-- time, however many instances sweep), and writes at most `budget`
-- deliveries. Returns the events finished and the deliveries written.
--
-- The targets of the whole batch are found set-based (the subscription test
-- of webhook_fan_out, for each event only the webhooks after its place),
-- ordered by (event, webhook id) and cut at `budget`. Events before the cut
-- are finished; the event the cut falls in keeps its place (fanned_out_to)
-- and stays undispatched, so its first chunk is committed and sent while the
-- next call writes the rest; events after the cut are left as they were.
-- With many unfiltered webhooks fewer events are taken per call, so a call
-- looks at about `budget` (event, webhook) pairs, not events x webhooks.
CREATE FUNCTION webhook_dispatch(max_events integer, budget integer,
                                 OUT events_done bigint, OUT deliveries bigint)
LANGUAGE plpgsql AS $$
DECLARE
    batch        webhook_events[];
    unfiltered   bigint;
    cut_event    bigint;
    last_event   bigint;
    last_webhook text;
BEGIN
    SELECT count(*) INTO unfiltered FROM webhooks w WHERE w.active AND w.filter IS NULL;
    max_events := least(max_events, greatest(1, budget / greatest(unfiltered, 1)));
    SELECT array_agg(q.ev ORDER BY (q.ev).id) INTO batch
    FROM (SELECT x AS ev FROM webhook_events x
          WHERE x.dispatched_at IS NULL AND x.set_aside_at IS NULL
          ORDER BY x.id
          LIMIT max_events
          FOR UPDATE SKIP LOCKED) q;
    IF batch IS NULL THEN
        events_done := 0;
        deliveries := 0;
        RETURN;
    END IF;

    WITH ev AS (
        SELECT e.* FROM unnest(batch) AS e
    ), targets AS MATERIALIZED (
        SELECT t.event_row, t.webhook_id, t.ordering,
               row_number() OVER (ORDER BY t.event_row, t.webhook_id) AS n
        FROM (
            SELECT e.id AS event_row, w.id AS webhook_id, w.ordering
            FROM ev e JOIN webhooks w ON w.active AND w.filter IS NULL
             AND (e.fanned_out_to IS NULL OR w.id > e.fanned_out_to) AND (
                '*' = ANY (w.events)
                OR e.event_type = ANY (w.events)
                OR EXISTS (SELECT 1 FROM unnest(w.events) AS p
                           WHERE right(p, 2) = '.*' AND starts_with(e.event_type, left(p, -1))))
            UNION ALL
            SELECT e.id, w.id, w.ordering
            FROM ev e JOIN webhooks w
              ON w.active AND w.filter IS NOT NULL
             -- a filter, not an index condition: as one it made the GIN
             -- lookup a BitmapAnd with a scan of every webhook id per event
             AND (e.fanned_out_to IS NULL OR w.id > e.fanned_out_to)
             AND webhook_filter_terms(w.filter) && webhook_data_terms(e.data)
             AND w.events && webhook_patterns_for(e.event_type)
             AND webhook_filter_matches(w.filter, e.data)
            WHERE EXISTS (SELECT 1 FROM webhooks f WHERE f.active AND f.filter IS NOT NULL)
            ORDER BY 1, 2
            LIMIT budget + 1
        ) t
    ), fanned AS (
        INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, event_seq, fifo_seq)
        SELECT t.webhook_id, e.event_id, e.event_type, e.id,
               CASE WHEN t.ordering = 'fifo' THEN e.id END
        FROM targets t JOIN ev e ON e.id = t.event_row
        WHERE t.n <= budget
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM fanned),
           (SELECT t.event_row FROM targets t WHERE t.n = budget + 1),
           (SELECT t.event_row FROM targets t WHERE t.n = budget),
           (SELECT t.webhook_id FROM targets t WHERE t.n = budget)
    INTO deliveries, cut_event, last_event, last_webhook;

    -- Finished: every event before the cut (all of them when the budget held).
    UPDATE webhook_events x
    SET dispatched_at = now(), fanned_out_to = NULL, fan_out_failures = 0, fan_out_error = NULL,
        body = coalesce(x.body, webhook_body(x.event_type, x.event_id, x.occurred_at, x.data))
    WHERE x.id IN (SELECT b.id FROM unnest(batch) b WHERE b.id < coalesce(cut_event, 9223372036854775807));
    GET DIAGNOSTICS events_done = ROW_COUNT;
    -- The event the budget ran out in keeps its place.
    IF cut_event IS NOT NULL AND last_event = cut_event THEN
        UPDATE webhook_events x
        SET fanned_out_to = last_webhook,
            body = coalesce(x.body, webhook_body(x.event_type, x.event_id, x.occurred_at, x.data))
        WHERE x.id = cut_event;
    END IF;
END $$;

-- A failed fan-out of one event (the sweep retries one event at a time after
-- a failure, so the failure is the head's), recorded in a transaction of its
-- own after the failed one rolled back. After `max_failures` in a row the
-- event is set aside: the sweep skips it, /stats and /metrics count it, and
-- webhook_retry_fan_out puts it back. Returns the event and whether it was
-- set aside; nothing when no event is waiting (another instance has it).
CREATE FUNCTION webhook_fan_out_failed(error text, max_failures integer)
RETURNS TABLE (event_id text, set_aside boolean) LANGUAGE sql AS $$
    UPDATE webhook_events x
    SET fan_out_failures = x.fan_out_failures + 1,
        fan_out_error = left($1, 1000),
        set_aside_at = CASE WHEN x.fan_out_failures + 1 >= $2 THEN now() END
    WHERE x.id = (SELECT h.id FROM webhook_events h
                  WHERE h.dispatched_at IS NULL AND h.set_aside_at IS NULL
                  ORDER BY h.id
                  LIMIT 1
                  FOR UPDATE SKIP LOCKED)
    RETURNING x.event_id, x.set_aside_at IS NOT NULL
$$;

-- Puts a set-aside event back in the sweep once its cause is fixed (NULL:
-- every set-aside event); its fan-out goes on where it stopped, and the
-- sweep is woken. Returns how many events were put back.
CREATE FUNCTION webhook_retry_fan_out(event_id text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE webhook_events x SET set_aside_at = NULL, fan_out_failures = 0
    WHERE x.dispatched_at IS NULL AND x.set_aside_at IS NOT NULL
      AND ($1 IS NULL OR x.event_id = $1);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('webhook_events', '');
    END IF;
    RETURN n;
END $$;

CREATE VIEW webhook_events_set_aside AS
    SELECT event_id, event_type, created_at, fan_out_failures, fan_out_error, set_aside_at, fanned_out_to
    FROM webhook_events
    WHERE dispatched_at IS NULL AND set_aside_at IS NOT NULL;
