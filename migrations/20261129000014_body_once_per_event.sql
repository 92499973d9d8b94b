-- Lean storage, step 1: a delivery's body is stored once per event, not once
-- per delivery. One 200 KiB event fanned out to 2,000 webhooks used to write
-- 2,000 copies of its body (about 400 MB of table and WAL); now it writes one.
--
-- The event keeps the serialized body (`webhook_body`, byte for byte what
-- receivers get, written when the event is dispatched) and each delivery
-- points at its event (`event_seq` = webhook_events.id). A delivery's own
-- `body` remains for what has no event row: the `/test` delivery, and every
-- delivery created before this migration (they keep their bytes; nothing is
-- rewritten, so the migration is instant on a big table).

ALTER TABLE webhook_events ADD COLUMN body text;

ALTER TABLE webhook_deliveries
    ADD COLUMN event_seq bigint,
    ALTER COLUMN body DROP NOT NULL,
    ADD CONSTRAINT webhook_deliveries_body_or_event CHECK (body IS NOT NULL OR event_seq IS NOT NULL) NOT VALID;
-- Every existing row has its body: validated without blocking writers.
ALTER TABLE webhook_deliveries VALIDATE CONSTRAINT webhook_deliveries_body_or_event;

-- What a delivery sends. An event dispatched before this migration has no
-- stored body; it is serialized again by the same function the fan-out used,
-- which gives the same bytes (jsonb's text form is canonical). Events are
-- never purged while a delivery can still be sent (README, retention).
CREATE FUNCTION webhook_delivery_body(own_body text, event_row bigint)
RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce($1,
                    (SELECT coalesce(e.body, webhook_body(e.event_type, e.event_id, e.occurred_at, e.data))
                     FROM webhook_events e WHERE e.id = $2))
$$;

-- The fan-out (migration 13) without the body copy: each delivery references
-- its event; the callers store the body on the event as they dispatch it.
CREATE OR REPLACE FUNCTION webhook_fan_out(events webhook_events[])
RETURNS TABLE (event_id text, deliveries bigint) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH ev AS (
        SELECT e.* FROM unnest(events) AS e
    ), targets AS (
        SELECT e.id AS event_row, w.id AS webhook_id, w.ordering
        FROM ev e JOIN webhooks w ON w.active AND w.filter IS NULL AND (
            '*' = ANY (w.events)
            OR e.event_type = ANY (w.events)
            OR EXISTS (SELECT 1 FROM unnest(w.events) AS p
                       WHERE right(p, 2) = '.*' AND starts_with(e.event_type, left(p, -1))))
        UNION ALL
        SELECT e.id, w.id, w.ordering
        FROM ev e JOIN webhooks w
          ON w.active AND w.filter IS NOT NULL
         AND webhook_filter_terms(w.filter) && webhook_data_terms(e.data)
         AND w.events && webhook_patterns_for(e.event_type)
         AND webhook_filter_matches(w.filter, e.data)
        WHERE EXISTS (SELECT 1 FROM webhooks f WHERE f.active AND f.filter IS NOT NULL)
    ), fanned AS (
        INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, event_seq, fifo_seq)
        SELECT t.webhook_id, e.event_id, e.event_type, e.id,
               CASE WHEN t.ordering = 'fifo' THEN e.id END
        FROM targets t JOIN ev e ON e.id = t.event_row
        RETURNING webhook_deliveries.event_id
    ), counted AS (
        SELECT f.event_id, count(*) AS n FROM fanned f GROUP BY f.event_id
    )
    SELECT e.event_id, coalesce(c.n, 0)
    FROM unnest(events) AS e
    LEFT JOIN counted c ON c.event_id = e.event_id;
END $$;

-- The claim (migration 13) returning the body as webhook_delivery_body does.
CREATE OR REPLACE FUNCTION webhook_claim(batch integer, lease_ms double precision, busy_ids text[],
                              busy_room integer[], new_room integer)
RETURNS TABLE (id text, lease_token uuid, attempts integer, webhook_id text, url text,
               secret text, previous_secret text, headers jsonb, event_type text, body text, probe boolean)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    lease_until timestamptz := now() + make_interval(secs => lease_ms / 1000);
    candidates  text[];
    wid         text;
    c           record;
    head_id     text;
    head_at     timestamptz;
    g           record;
    remaining   integer := batch;
    left_to_see integer;
    room        integer;
    want        integer;
    got         integer;
    is_probe    boolean;
    i           integer;
    pass        integer;
    again       text[];
    to_sleep    text[] := '{}';
    sleepers    text[];
BEGIN
    SELECT array_agg(s.webhook_id ORDER BY s.ready_at) INTO candidates
    FROM (SELECT s.webhook_id, s.ready_at FROM webhook_endpoint_state s
          WHERE s.ready_at <= now()
          ORDER BY s.ready_at
          LIMIT batch + coalesce(cardinality(busy_ids), 0)) s;
    busy_ids := coalesce(busy_ids, '{}');
    busy_room := coalesce(busy_room, '{}');

    -- Two passes: the first gives each webhook an even share of the batch; the
    -- second lets those that had more due take what the others left.
    FOR pass IN 1..2 LOOP
    EXIT WHEN remaining <= 0 OR coalesce(cardinality(candidates), 0) = 0;
    left_to_see := cardinality(candidates);
    again := '{}';
    FOREACH wid IN ARRAY candidates LOOP
        EXIT WHEN remaining <= 0;
        left_to_see := left_to_see - 1;

        SELECT w.active, w.ordering, w.rate_limit, w.url, w.secret, w.headers, w.disabled_reason,
               CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END AS previous_secret,
               s.circuit, s.open_until, s.throttle_tat
        INTO c
        FROM webhook_endpoint_state s JOIN webhooks w ON w.id = s.webhook_id
        WHERE s.webhook_id = wid;
        CONTINUE WHEN NOT FOUND;

        IF NOT c.active THEN
            -- Deactivated or disabled: what is pending is not sent (the dead
            -- letter), a bounded batch per claim; the rest on the next ones.
            PERFORM 1 FROM webhook_endpoint_state s WHERE s.webhook_id = wid FOR UPDATE SKIP LOCKED;
            CONTINUE WHEN NOT FOUND;
            UPDATE webhook_deliveries d
            SET status = 'failed',
                last_error = coalesce('not sent: the webhook was disabled: ' || c.disabled_reason,
                                      'not sent: the webhook is inactive')
            WHERE d.id IN (SELECT x.id FROM webhook_deliveries x
                           WHERE x.webhook_id = wid AND x.status = 'pending' AND x.next_retry_at <= now()
                           LIMIT 1000
                           FOR UPDATE SKIP LOCKED);
            -- What is still in flight comes back when its lease ends.
            UPDATE webhook_endpoint_state s
            SET ready_at = (SELECT min(x.next_retry_at) FROM webhook_deliveries x
                            WHERE x.webhook_id = wid AND x.status = 'pending')
            WHERE s.webhook_id = wid;
            CONTINUE;
        END IF;

        -- Circuit, throttle and FIFO decisions must be exclusive across
        -- instances: take the state row, or leave this webhook for next time.
        -- (NO KEY UPDATE: publishers' KEY SHARE locks do not stand in the way.)
        IF c.circuit <> 'closed' OR c.rate_limit IS NOT NULL OR c.ordering = 'fifo' THEN
            SELECT s.circuit, s.open_until, s.throttle_tat INTO g
            FROM webhook_endpoint_state s WHERE s.webhook_id = wid FOR NO KEY UPDATE SKIP LOCKED;
            CONTINUE WHEN NOT FOUND;
            c.circuit := g.circuit;
            c.open_until := g.open_until;
            c.throttle_tat := g.throttle_tat;
        END IF;

        is_probe := false;
        IF c.circuit <> 'closed' THEN
            IF c.open_until > now() THEN
                IF c.circuit = 'open' THEN
                    -- Cooling down: rows that came due since are deferred (one
                    -- statement; no attempt is used).
                    UPDATE webhook_deliveries d SET next_retry_at = c.open_until
                    WHERE d.id IN (SELECT x.id FROM webhook_deliveries x
                                   WHERE x.webhook_id = wid AND x.status = 'pending'
                                     AND x.next_retry_at < c.open_until AND x.lease_token IS NULL
                                   FOR UPDATE SKIP LOCKED);
                END IF;
                -- open: back at the end of the cool-down; half_open: when the
                -- probe's lease ends (a probe lost with its worker is replaced).
                UPDATE webhook_endpoint_state s SET ready_at = c.open_until WHERE s.webhook_id = wid;
                CONTINUE;
            END IF;
            is_probe := true;
        END IF;

        i := array_position(busy_ids, wid);
        room := CASE WHEN i IS NULL THEN new_room ELSE busy_room[i] END;
        CONTINUE WHEN room <= 0;
        want := least(room, ceil(remaining::numeric / (left_to_see + 1))::integer);
        IF is_probe OR c.ordering = 'fifo' THEN
            want := 1;
        END IF;

        IF c.rate_limit IS NOT NULL THEN
            SELECT * INTO g FROM webhook_gcra(c.throttle_tat, now(), c.rate_limit, want) g;
            IF g.allowed = 0 THEN
                UPDATE webhook_endpoint_state s SET ready_at = g.next_at WHERE s.webhook_id = wid;
                CONTINUE;
            END IF;
            want := g.allowed;
        END IF;

        head_id := NULL;
        head_at := NULL;
        IF c.ordering = 'fifo' THEN
            -- The head is the oldest pending row in publish order. Leased (in
            -- flight) or waiting for its retry, it holds the rest back.
            SELECT x.id, x.next_retry_at INTO head_id, head_at FROM webhook_deliveries x
            WHERE x.webhook_id = wid AND x.status = 'pending' AND x.fifo_seq IS NOT NULL
            ORDER BY x.fifo_seq, x.id LIMIT 1;
            IF head_at > now() THEN
                UPDATE webhook_endpoint_state s SET ready_at = head_at WHERE s.webhook_id = wid;
                CONTINUE;
            END IF;
            -- no FIFO row: only rows from before the switch to FIFO, one at a time
        END IF;

        RETURN QUERY
        WITH due AS (
            SELECT x.id FROM webhook_deliveries x
            WHERE x.webhook_id = wid AND x.status = 'pending' AND x.next_retry_at <= now()
              AND (head_id IS NULL OR x.id = head_id)
            ORDER BY x.next_retry_at
            LIMIT want
            FOR UPDATE SKIP LOCKED
        )
        UPDATE webhook_deliveries d
        SET next_retry_at = lease_until, lease_expires_at = lease_until, lease_token = gen_random_uuid()
        FROM due WHERE d.id = due.id
        RETURNING d.id, d.lease_token, d.attempts - d.attempts_before, d.webhook_id, c.url, c.secret, c.previous_secret, c.headers,
                  d.event_type,
                  -- webhook_delivery_body written out: a SQL function holding a
                  -- subquery is not inlined, and a call per row cost the claim
                  -- 80 us per delivery
                  coalesce(d.body,
                           (SELECT coalesce(e.body, webhook_body(e.event_type, e.event_id, e.occurred_at, e.data))
                            FROM webhook_events e WHERE e.id = d.event_seq)),
                  is_probe;
        GET DIAGNOSTICS got = ROW_COUNT;
        remaining := remaining - got;
        IF i IS NULL THEN
            busy_ids := busy_ids || wid;
            busy_room := busy_room || (new_room - got);
        ELSE
            busy_room[i] := busy_room[i] - got;
        END IF;
        IF got = want AND want < room AND NOT is_probe AND c.ordering <> 'fifo' AND c.rate_limit IS NULL THEN
            again := again || wid;
        END IF;

        IF got > 0 AND c.rate_limit IS NOT NULL THEN
            SELECT * INTO g FROM webhook_gcra(c.throttle_tat, now(), c.rate_limit, got) g;
            UPDATE webhook_endpoint_state s SET throttle_tat = g.new_tat WHERE s.webhook_id = wid;
        END IF;
        IF got > 0 AND is_probe THEN
            UPDATE webhook_endpoint_state s SET circuit = 'half_open', open_until = lease_until, ready_at = lease_until
            WHERE s.webhook_id = wid;
            CONTINUE;
        END IF;
        IF got > 0 AND c.ordering = 'fifo' THEN
            -- back when the head's lease ends; the completer wakes it sooner
            UPDATE webhook_endpoint_state s SET ready_at = lease_until WHERE s.webhook_id = wid;
            CONTINUE;
        END IF;

        IF got < want OR (got > 0 AND cardinality(candidates) > 1) THEN
            -- Done with it for now (see the end).
            to_sleep := to_sleep || wid;
        ELSIF c.rate_limit IS NOT NULL THEN
            -- throttled: back at the next slot
            UPDATE webhook_endpoint_state s
            SET ready_at = greatest(now(), (SELECT g2.next_at FROM webhook_gcra(s.throttle_tat, now(), c.rate_limit, 0) g2))
            WHERE s.webhook_id = wid;
        END IF;
    END LOOP;
    candidates := again;
    END LOOP;

    -- The webhooks done with for now go to the back of the line if they have
    -- more due (round robin), else to sleep until their earliest pending row
    -- (a retry, or a lease that may expire). Only under FOR UPDATE, which a
    -- publisher's KEY SHARE lock refuses, and in the next statement's fresh
    -- snapshot: rows being inserted that we cannot see yet keep a webhook
    -- awake. One statement each for all of them.
    IF cardinality(to_sleep) > 0 THEN
        SELECT array_agg(l.webhook_id) INTO sleepers
        FROM (SELECT s.webhook_id FROM webhook_endpoint_state s
              WHERE s.webhook_id = ANY(to_sleep)
              ORDER BY s.webhook_id
              FOR UPDATE SKIP LOCKED) l;
        UPDATE webhook_endpoint_state s
        SET ready_at = (SELECT CASE WHEN min(x.next_retry_at) <= now() THEN now()
                                    ELSE min(x.next_retry_at) END
                        FROM webhook_deliveries x
                        WHERE x.webhook_id = s.webhook_id AND x.status = 'pending')
        WHERE s.webhook_id = ANY(sleepers);
    END IF;
END $$;
