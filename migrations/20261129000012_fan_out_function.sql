-- The fan-out written once, for its two callers: the sweep (events from
-- SQL producers, claimed with FOR UPDATE SKIP LOCKED) and the HTTP intake
-- (events it inserts already marked dispatched, in the same statement, so
-- they cost no second write and no scan of the undispatched index).

-- A delivery's body, byte for byte as receivers get it: serialized once per
-- event, `data` as Postgres stores it (numbers keep every digit).
CREATE FUNCTION webhook_body(event_type text, event_id text, occurred_at timestamptz, data jsonb)
RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT '{"event":' || to_json(event_type)::text
        || ',"event_id":' || to_json(event_id)::text
        || ',"occurred_at":'
        || to_json(to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text
        || ',"data":' || data::text || '}'
$$;

-- One delivery per active webhook subscribed to each event; the caller has
-- written the events and marked them dispatched in its transaction. Returns
-- every event with the deliveries it got (0 when nobody subscribes).
-- Subscription patterns, as in domain::event_pattern: '*', an exact name,
-- or 'prefix.*'. A FIFO webhook's rows carry their publish order.
-- PL/pgSQL so the plan is prepared once per connection.
CREATE FUNCTION webhook_fan_out(events webhook_events[])
RETURNS TABLE (event_id text, deliveries bigint) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH fanned AS (
        INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, body, fifo_seq)
        SELECT w.id, e.event_id, e.event_type,
               webhook_body(e.event_type, e.event_id, e.occurred_at, e.data),
               CASE WHEN w.ordering = 'fifo' THEN e.id END
        FROM unnest(events) AS e
        JOIN webhooks w ON w.active AND (
            '*' = ANY (w.events)
            OR e.event_type = ANY (w.events)
            OR EXISTS (SELECT 1 FROM unnest(w.events) AS p
                       WHERE right(p, 2) = '.*' AND starts_with(e.event_type, left(p, -1)))
        )
        RETURNING webhook_deliveries.event_id
    ), counted AS (
        SELECT f.event_id, count(*) AS n FROM fanned f GROUP BY f.event_id
    )
    SELECT e.event_id, coalesce(c.n, 0)
    FROM unnest(events) AS e
    LEFT JOIN counted c ON c.event_id = e.event_id;
END $$;
