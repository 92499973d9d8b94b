-- Endpoint isolation: each webhook's trouble is its own.
--
-- The claim no longer walks one global queue of due rows (where one endpoint's
-- thousands of due rows sit in front of everyone else's). It walks webhooks:
-- `webhook_endpoint_state` holds, per webhook, when the claim should next look
-- at it (`ready_at`), its circuit breaker and its throttle. A webhook that may
-- not send now (circuit open, throttled, FIFO head in flight, at its share of
-- the send slots) costs the claim one row, however large its backlog.

ALTER TABLE webhooks
    -- deliveries per second, across all instances; NULL = unlimited
    ADD COLUMN rate_limit integer CHECK (rate_limit BETWEEN 1 AND 100000),
    ADD COLUMN ordering text NOT NULL DEFAULT 'unordered' CHECK (ordering IN ('unordered', 'fifo')),
    -- set when the service disabled the webhook (410 Gone, a circuit open too long)
    ADD COLUMN disabled_reason text,
    ADD COLUMN disabled_at timestamptz;

-- The publish order (webhook_events.id) of a FIFO webhook's delivery; NULL for
-- unordered webhooks, so only FIFO rows pay for the index below.
ALTER TABLE webhook_deliveries ADD COLUMN fifo_seq bigint;

CREATE TABLE webhook_endpoint_state (
    webhook_id           text PRIMARY KEY REFERENCES webhooks (id) ON DELETE CASCADE,
    -- When the claim should next look at this webhook: lowered whenever one of
    -- its rows may have become due (insert, retry scheduled, FIFO head done,
    -- circuit closed), raised by the claim to the earliest pending row, the end
    -- of a cool-down or the next throttle slot. NULL: nothing pending.
    ready_at             timestamptz,
    circuit              text NOT NULL DEFAULT 'closed' CHECK (circuit IN ('closed', 'open', 'half_open')),
    consecutive_failures integer NOT NULL DEFAULT 0,
    -- open: the end of the cool-down; half_open: the end of the probe's lease
    open_until           timestamptz,
    -- the current cool-down, doubled on each failed probe
    cooldown_ms          bigint,
    -- when the circuit first opened since the last success (auto-disable)
    opened_at            timestamptz,
    -- GCRA theoretical arrival time of the throttle
    throttle_tat         timestamptz
);
-- The claim's walk: webhooks that may have due work, longest waiting first.
CREATE INDEX webhook_endpoint_state_ready_idx ON webhook_endpoint_state (ready_at) WHERE ready_at IS NOT NULL;
-- The reporting views and the metrics read open circuits only.
CREATE INDEX webhook_endpoint_state_open_idx ON webhook_endpoint_state (webhook_id) WHERE circuit <> 'closed';

INSERT INTO webhook_endpoint_state (webhook_id, ready_at)
SELECT w.id, (SELECT min(d.next_retry_at) FROM webhook_deliveries d WHERE d.webhook_id = w.id AND d.status = 'pending')
FROM webhooks w;

CREATE FUNCTION webhook_endpoint_state_create() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_endpoint_state (webhook_id) SELECT id FROM new_rows;
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_endpoint_state_create
    AFTER INSERT ON webhooks REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_endpoint_state_create();

-- A webhook's due rows, oldest first, and its earliest pending row (which the
-- claim reads to know when to come back). Replaces the global due index.
DROP INDEX webhook_deliveries_due_idx;
CREATE INDEX webhook_deliveries_webhook_due_idx ON webhook_deliveries (webhook_id, next_retry_at) WHERE status = 'pending';
-- A FIFO webhook's head.
CREATE INDEX webhook_deliveries_fifo_idx ON webhook_deliveries (webhook_id, fifo_seq, id)
    WHERE status = 'pending' AND fifo_seq IS NOT NULL;

-- Whatever inserts deliveries (fan-out, /test, an operator's SQL) makes their
-- webhooks ready. Every affected state row is held FOR KEY SHARE until the
-- inserting transaction ends: publishers do not block one another, but the
-- claim, which puts a webhook to sleep only under FOR UPDATE SKIP LOCKED,
-- cannot put it to sleep over rows it cannot see yet. Only webhooks that were
-- asleep are written, locked in webhook_id order (as the completer locks) so
-- writers queue instead of deadlocking.
CREATE FUNCTION webhook_deliveries_ready() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM webhook_endpoint_state s
    WHERE s.webhook_id IN (SELECT n.webhook_id FROM new_rows n WHERE n.status = 'pending')
    ORDER BY s.webhook_id
    FOR KEY SHARE;
    PERFORM 1 FROM webhook_endpoint_state s
    JOIN (SELECT webhook_id, min(next_retry_at) AS due FROM new_rows WHERE status = 'pending' GROUP BY webhook_id) n
      ON n.webhook_id = s.webhook_id
    WHERE s.ready_at IS NULL OR s.ready_at > n.due
    ORDER BY s.webhook_id
    FOR NO KEY UPDATE OF s;
    UPDATE webhook_endpoint_state s SET ready_at = least(s.ready_at, n.due)
    FROM (SELECT webhook_id, min(next_retry_at) AS due FROM new_rows WHERE status = 'pending' GROUP BY webhook_id) n
    WHERE s.webhook_id = n.webhook_id AND (s.ready_at IS NULL OR s.ready_at > n.due);
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_deliveries_ready
    AFTER INSERT ON webhook_deliveries REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_deliveries_ready();

-- GCRA (a leaky bucket without a counter): `rate` cells per second, a burst of
-- one second's worth. Given the theoretical arrival time `tat`, how many of
-- `want` cells may go at `now`, the new tat, and when the next cell is allowed.
-- Pure; its known answers are in the tests.
CREATE FUNCTION webhook_gcra(tat timestamptz, t_now timestamptz, rate integer, want integer,
                             OUT allowed integer, OUT new_tat timestamptz, OUT next_at timestamptz)
LANGUAGE sql IMMUTABLE AS $$
    WITH t AS (
        SELECT greatest(coalesce(tat, t_now), t_now) AS t0, make_interval(secs => 1.0 / rate) AS step
    ), n AS (
        -- cells available: the full burst when idle, fewer while tat runs ahead
        -- of now (1e-6 absorbs microsecond rounding of 1/rate)
        SELECT t0, step,
               greatest(0, least(want, floor(extract(epoch FROM t_now - t0) * rate + 1e-6)::integer + rate)) AS cells
        FROM t
    )
    SELECT cells, t0 + step * cells, t0 + step * cells - step * (rate - 1)
    FROM n
$$;

-- The claim. Walks webhooks whose ready_at has passed, longest waiting first,
-- and leases up to `batch` due deliveries among them, split evenly, each
-- webhook limited by:
--   * this instance's share of send slots (`busy_ids`/`busy_room`: the room
--     left for webhooks it already has sends in flight for; `new_room` for
--     the others), computed by the caller;
--   * its circuit: open = nothing (rows that came due are deferred to the end
--     of the cool-down, without using an attempt); cool-down over = one probe;
--   * its throttle (GCRA, state row locked, so it holds across instances);
--   * FIFO: only the head, and only when nothing of it is in flight.
-- Rows that cannot go now are not leased. The claim never waits on a lock
-- (SKIP LOCKED everywhere), so it cannot deadlock with the completer or the
-- fan-out; a webhook locked by someone else is simply looked at next time.
CREATE FUNCTION webhook_claim(batch integer, lease_ms double precision, busy_ids text[],
                              busy_room integer[], new_room integer)
RETURNS TABLE (id text, lease_token uuid, attempts integer, webhook_id text, url text,
               secret text, event_type text, body text, probe boolean)
LANGUAGE plpgsql VOLATILE AS $$
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

        SELECT w.active, w.ordering, w.rate_limit, w.url, w.secret, w.disabled_reason,
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
        RETURNING d.id, d.lease_token, d.attempts, d.webhook_id, c.url, c.secret, d.event_type, d.body, is_probe;
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

-- Open circuits and disabled webhooks, for dashboards.
CREATE VIEW webhook_open_circuits AS
    SELECT w.id AS webhook_id, w.url, s.circuit, s.consecutive_failures, s.open_until, s.opened_at
    FROM webhook_endpoint_state s JOIN webhooks w ON w.id = s.webhook_id
    WHERE s.circuit <> 'closed' AND w.active;

CREATE VIEW webhook_disabled AS
    SELECT id AS webhook_id, url, disabled_reason, disabled_at
    FROM webhooks
    WHERE disabled_at IS NOT NULL AND NOT active;
