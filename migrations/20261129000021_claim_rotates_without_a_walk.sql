-- A webhook that got its whole share and has more due goes to the back of
-- the line with a plain write of its ready_at, not through the sleep step.
--
-- With many webhooks due at once (fanout: 100 webhooks x 1,000 events) every
-- claim of 25 took one delivery from each of 25 webhooks and then put each
-- of them "to sleep" until its earliest pending row, which was due at once:
-- the sleepers' FOR UPDATE (0.92 ms a claim) and a walk of each webhook's
-- due rows to find that row (2.85 ms), 3.8 of the claim's 10.7 ms, to write
-- ready_at = now(). A webhook whose share was filled and that has more due
-- now (the row after its share, read in the same walk, unlocked) is moved to
-- the back of the line by one UPDATE for all of them, which also raises its
-- floor to what it took, as a drain in large shares does (migration 17): rows
-- below it that another claim held are found when the floor lapses (10 s).
-- The sleep step stays for the rest: nothing more due, a share cut short,
-- throttled webhooks. Otherwise unchanged from migration 20.
CREATE OR REPLACE FUNCTION webhook_claim(batch integer, lease_ms double precision, busy_ids text[],
                              busy_room integer[], new_room integer)
RETURNS TABLE (id text, lease_token uuid, attempts integer, webhook_id text, url text,
               secret text, previous_secret text, headers jsonb, event_type text, body text, probe boolean)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
-- The due rows must come from an ordered walk of the (webhook_id,
-- next_retry_at) index that stops after `want`. The generic plan's estimate
-- for them is one row, and with that estimate Postgres preferred a bitmap
-- scan of every due row of the webhook and a sort: 0.7 ms per webhook with
-- 200 due, 40 ms per claim of 25 with 1,000 due each (fan-out scenario: 0.12x).
-- It did so on the unpartitioned table too once it had statistics
-- (autovacuum on): 9 ms per claim instead of 2.7.
SET enable_bitmapscan = off
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
    -- filled their share and have more due: to the back of the line
    to_rotate   text[] := '{}';
    sleepers    text[];
    -- the small shares of this pass, taken together at its end
    s_ids       text[] := '{}';
    s_wants     integer[] := '{}';
    s_rooms     integer[] := '{}';
    s_floors    timestamptz[] := '{}';
    s_urls      text[] := '{}';
    s_secrets   text[] := '{}';
    s_previous  text[] := '{}';
    s_headers   jsonb[] := '{}';
    r_ids       text[];
    r_tokens    uuid[];
    r_attempts  integer[];
    r_hooks     text[];
    r_types     text[];
    r_bodies    text[];
    r_dues      timestamptz[];
    r_more      text[];
    -- what the small shares took, over all passes (their floors)
    f_hooks     text[] := '{}';
    f_dues      timestamptz[] := '{}';
    k           integer;
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
    FOR pass IN 1..3 LOOP
    EXIT WHEN remaining <= 0 OR coalesce(cardinality(candidates), 0) = 0;
    left_to_see := cardinality(candidates);
    again := '{}';
    FOREACH wid IN ARRAY candidates LOOP
        EXIT WHEN remaining <= 0;
        left_to_see := left_to_see - 1;

        SELECT w.active, w.ordering, w.rate_limit, w.url, w.secret, w.headers, w.disabled_reason,
               CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END AS previous_secret,
               s.circuit, s.open_until, s.throttle_tat,
               -- where its due rows start ('-infinity': walk them all)
               CASE WHEN s.due_floor_from > now() - interval '10 seconds' AND w.ordering <> 'fifo'
                    THEN s.due_floor ELSE '-infinity' END AS due_floor
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
            SET status = 'failed', done_at = now(),
                last_error = coalesce('not sent: the webhook was disabled: ' || c.disabled_reason,
                                      'not sent: the webhook is inactive')
            WHERE d.status = 'pending' AND d.id IN (SELECT x.id FROM webhook_deliveries x
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
                    WHERE d.status = 'pending' AND d.id IN (SELECT x.id FROM webhook_deliveries x
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

        IF c.circuit = 'closed' AND c.rate_limit IS NULL AND c.ordering <> 'fifo' AND want < 10 THEN
            -- a small share of a plain webhook: taken with the others at the
            -- end of the pass, counted as taken until then
            s_ids := s_ids || wid;
            s_wants := s_wants || want;
            s_rooms := s_rooms || room;
            s_floors := s_floors || c.due_floor;
            s_urls := s_urls || c.url;
            s_secrets := s_secrets || c.secret;
            s_previous := s_previous || c.previous_secret;
            s_headers := s_headers || c.headers;
            remaining := remaining - want;
            CONTINUE;
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
            SELECT x.id, x.next_retry_at AS was_due FROM webhook_deliveries x
            WHERE x.webhook_id = wid AND x.status = 'pending' AND x.next_retry_at <= now()
              AND x.next_retry_at >= c.due_floor
              AND (head_id IS NULL OR x.id = head_id)
            ORDER BY x.next_retry_at
            LIMIT want
            FOR UPDATE SKIP LOCKED
        ), floor AS (
            -- A webhook drained in large shares (a backlog, claimed again
            -- and again without going to sleep) raises its floor here: after
            -- a full walk to what it found first, then, within the floor's
            -- 10 s, at most every 100 ms (a claim that finds the row locked
            -- by another leaves it to that one; once a second left a drain
            -- at 6,000/s walking 12,000 dead entries a claim: 0.69x). Small shares go to sleep
            -- after the claim, which sets the floor without another write.
            UPDATE webhook_endpoint_state s
            SET due_floor = CASE WHEN c.due_floor = '-infinity'
                                 THEN least(f.taken, now() - interval '1 second')
                                 ELSE greatest(s.due_floor, least(f.taken, now() - interval '1 second')) END,
                due_floor_from = CASE WHEN c.due_floor = '-infinity' THEN now() ELSE s.due_floor_from END,
                due_floor_at = now()
            FROM (SELECT min(due.was_due) AS taken FROM due) f
            WHERE f.taken IS NOT NULL AND want >= 10 AND c.ordering <> 'fifo'
              AND s.webhook_id = (SELECT s2.webhook_id FROM webhook_endpoint_state s2
                                  WHERE s2.webhook_id = wid
                                    AND (c.due_floor = '-infinity' OR s2.due_floor_at < now() - interval '100 milliseconds')
                                  FOR NO KEY UPDATE SKIP LOCKED)
        )
        UPDATE webhook_deliveries d
        SET next_retry_at = lease_until, lease_expires_at = lease_until, lease_token = gen_random_uuid()
        FROM due WHERE d.status = 'pending' AND d.id = due.id
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

        IF got = want AND got > 0 AND cardinality(candidates) > 1 AND c.rate_limit IS NULL THEN
            -- A full share, taken from a backlog (its floor raised above):
            -- to the back of the line.
            to_rotate := to_rotate || wid;
        ELSIF got < want OR (got > 0 AND cardinality(candidates) > 1) THEN
            -- Done with it for now (see the end).
            to_sleep := to_sleep || wid;
        ELSIF c.rate_limit IS NOT NULL THEN
            -- throttled: back at the next slot
            UPDATE webhook_endpoint_state s
            SET ready_at = greatest(now(), (SELECT g2.next_at FROM webhook_gcra(s.throttle_tat, now(), c.rate_limit, 0) g2))
            WHERE s.webhook_id = wid;
        END IF;
    END LOOP;

    -- Shares are counted as taken while collected, so the walk may have
    -- stopped before the end: those not reached go first in the next pass,
    -- with whatever the collected shares did not fill (a third pass for
    -- what the second leaves).
    again := candidates[cardinality(candidates) - left_to_see + 1 : cardinality(candidates)] || again;

    IF cardinality(s_ids) > 0 THEN
        -- The small shares: each webhook's due rows as its own statement
        -- would find them (its index, from its floor, up to its share), all
        -- in one statement.
        WITH share AS (
            SELECT * FROM unnest(s_ids, s_wants, s_floors) AS p(wid, want, due_floor)
        ), due AS (
            SELECT x.id, x.was_due FROM share p
            CROSS JOIN LATERAL (SELECT x.id, x.next_retry_at AS was_due FROM webhook_deliveries x
                                WHERE x.webhook_id = p.wid AND x.status = 'pending' AND x.next_retry_at <= now()
                                  AND x.next_retry_at >= p.due_floor
                                ORDER BY x.next_retry_at
                                LIMIT p.want
                                FOR UPDATE SKIP LOCKED) x
        ), leased AS (
            UPDATE webhook_deliveries d
            SET next_retry_at = lease_until, lease_expires_at = lease_until, lease_token = gen_random_uuid()
            FROM due WHERE d.status = 'pending' AND d.id = due.id
            RETURNING d.id, d.lease_token, d.attempts - d.attempts_before AS tries, d.webhook_id, d.event_type,
                      due.was_due,
                      coalesce(d.body,
                               (SELECT coalesce(e.body, webhook_body(e.event_type, e.event_id, e.occurred_at, e.data))
                                FROM webhook_events e WHERE e.id = d.event_seq)) AS sent
        )
        SELECT array_agg(l.id), array_agg(l.lease_token), array_agg(l.tries), array_agg(l.webhook_id),
               array_agg(l.event_type), array_agg(l.sent), array_agg(l.was_due),
               -- whether a webhook has more due after its share: the next
               -- row of the same walk, read, not locked
               (SELECT array_agg(p.wid) FROM share p
                WHERE EXISTS (SELECT 1 FROM webhook_deliveries x
                              WHERE x.webhook_id = p.wid AND x.status = 'pending' AND x.next_retry_at <= now()
                                AND x.next_retry_at >= p.due_floor
                              ORDER BY x.next_retry_at
                              OFFSET p.want LIMIT 1))
        INTO r_ids, r_tokens, r_attempts, r_hooks, r_types, r_bodies, r_dues, r_more
        FROM leased l;
        IF r_ids IS NOT NULL THEN
            RETURN QUERY
            SELECT r.id, r.token, r.tries, r.hook, p.url, p.secret, p.previous, p.headers, r.type, r.sent, false
            FROM unnest(r_ids, r_tokens, r_attempts, r_hooks, r_types, r_bodies)
                     AS r(id, token, tries, hook, type, sent)
            JOIN unnest(s_ids, s_urls, s_secrets, s_previous, s_headers)
                     AS p(wid, url, secret, previous, headers) ON p.wid = r.hook;
        END IF;
        -- Each webhook as if its own statement had run: the same
        -- bookkeeping as above for a plain webhook.
        FOR k IN 1..cardinality(s_ids) LOOP
            wid := s_ids[k];
            got := coalesce(cardinality(array_positions(r_hooks, wid)), 0);
            remaining := remaining + s_wants[k] - got;
            i := array_position(busy_ids, wid);
            IF i IS NULL THEN
                busy_ids := busy_ids || wid;
                busy_room := busy_room || (new_room - got);
            ELSE
                busy_room[i] := busy_room[i] - got;
            END IF;
            IF got = s_wants[k] AND s_wants[k] < s_rooms[k] THEN
                again := again || wid;
            END IF;
            IF got = s_wants[k] AND cardinality(candidates) > 1 AND wid = ANY(r_more) THEN
                to_rotate := to_rotate || wid;
            ELSIF got < s_wants[k] OR (got > 0 AND cardinality(candidates) > 1) THEN
                to_sleep := to_sleep || wid;
            END IF;
        END LOOP;
        s_ids := '{}'; s_wants := '{}'; s_rooms := '{}'; s_floors := '{}';
        s_urls := '{}'; s_secrets := '{}'; s_previous := '{}'; s_headers := '{}';
        IF r_ids IS NOT NULL THEN
            f_hooks := f_hooks || r_hooks;
            f_dues := f_dues || r_dues;
        END IF;
    END IF;
    candidates := again;
    END LOOP;

    -- The webhooks done with for now that have more due go to the back of
    -- the line (round robin), small shares with their floor raised to what
    -- they took (big shares raised theirs in their own statement).
    IF cardinality(to_rotate) > 0 THEN
        UPDATE webhook_endpoint_state s
        SET ready_at = now(),
            due_floor = CASE WHEN f.taken IS NULL THEN s.due_floor
                             WHEN s.due_floor_from > now() - interval '10 seconds'
                             THEN greatest(s.due_floor, f.taken) ELSE f.taken END,
            due_floor_from = CASE WHEN f.taken IS NULL OR s.due_floor_from > now() - interval '10 seconds'
                                  THEN s.due_floor_from ELSE now() END,
            due_floor_at = CASE WHEN f.taken IS NULL THEN s.due_floor_at ELSE now() END
        FROM (SELECT r.wid, (SELECT least(min(t.due), now() - interval '1 second')
                             FROM unnest(f_hooks, f_dues) AS t(hook, due) WHERE t.hook = r.wid) AS taken
              FROM unnest(to_rotate) AS r(wid)
              -- one that went to sleep in a later pass is the sleep step's
              WHERE NOT r.wid = ANY(to_sleep)) f
        -- Rows taken in webhook_id order, as every writer of this table takes
        -- them, and skipped when another holds one (the fan-out lowering its
        -- ready_at, a completion): waiting here deadlocked with the fan-out.
        WHERE s.webhook_id = f.wid
          AND s.webhook_id IN (SELECT s2.webhook_id FROM webhook_endpoint_state s2
                               WHERE s2.webhook_id = ANY(to_rotate)
                               ORDER BY s2.webhook_id
                               FOR NO KEY UPDATE SKIP LOCKED);
    END IF;

    -- The others done with for now go to sleep until their earliest pending
    -- row (a retry, or a lease that may expire), or to the back of the line
    -- if that row is due. Only under FOR UPDATE, which a publisher's KEY SHARE
    -- lock refuses, and in the next statement's fresh snapshot: rows being
    -- inserted that we cannot see yet keep a webhook awake. One statement
    -- each for all of them.
    IF cardinality(to_sleep) > 0 THEN
        SELECT array_agg(l.webhook_id) INTO sleepers
        FROM (SELECT s.webhook_id FROM webhook_endpoint_state s
              WHERE s.webhook_id = ANY(to_sleep)
              ORDER BY s.webhook_id
              FOR UPDATE SKIP LOCKED) l;
        -- The earliest pending row, from the floor on, is both when the
        -- webhook is next due and its new floor (this walk skips no locked
        -- row). A webhook put to sleep while its floor holds is awake again
        -- when the floor ends, to look below it once more: whatever writes a
        -- pending row wakes its webhook, so a row hidden below a floor shows
        -- here, as a wake-up that found nothing. After a full walk nothing
        -- is hidden and no extra wake-up is needed. (ORDER BY … LIMIT 1: written as min(),
        -- with the generic plan's one-row estimate it was planned as an
        -- aggregate over all of the webhook's pending rows, 7 ms a claim with
        -- 1,000 pending each.)
        WITH first AS (
            SELECT s.webhook_id,
                   s.due_floor_from > now() - interval '10 seconds' AS held,
                   (SELECT x.next_retry_at FROM webhook_deliveries x
                    WHERE x.webhook_id = s.webhook_id AND x.status = 'pending'
                      AND x.next_retry_at >= CASE WHEN s.due_floor_from > now() - interval '10 seconds'
                                                  THEN s.due_floor ELSE '-infinity' END
                    ORDER BY x.next_retry_at
                    LIMIT 1) AS due
            FROM webhook_endpoint_state s
            WHERE s.webhook_id = ANY(sleepers)
        )
        UPDATE webhook_endpoint_state s
        SET ready_at = least(CASE WHEN f.due <= now() THEN now() ELSE f.due END,
                             CASE WHEN f.held THEN s.due_floor_from + interval '10 seconds' END),
            due_floor = least(coalesce(f.due, 'infinity'), now() - interval '1 second'),
            due_floor_from = CASE WHEN f.held THEN s.due_floor_from ELSE now() END,
            due_floor_at = now()
        FROM first f
        WHERE s.webhook_id = f.webhook_id;
    END IF;
END $$;

