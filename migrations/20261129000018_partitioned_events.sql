-- Partitioned events: retention drops whole weeks of events, as it drops days
-- of history (migration 16).
--
-- webhook_events is PARTITION BY RANGE (id), one partition per week (Monday,
-- UTC). Ids stay one increasing sequence (fan-out order, FIFO, replay and the
-- delivery's reference `event_seq` all rely on it); at the start of a week the
-- service moves the sequence up to that week's range, so a week's events sit
-- in its partition. A week's range is [yyyymmdd of its Monday × 10^10, the
-- next Monday's): an id says which week it was accepted in, and each week has
-- room for at least 7 × 10^10 ids.
--
-- Why by id and not by time: deliveries find their event's body by id
-- (`event_seq`), once per send, and a lookup by the partition key reads one
-- partition. Why weeks and not days: `event_id` must be unique across all of
-- them, and Postgres cannot enforce that (a unique key must include the
-- partition key), so every partition keeps its own unique index and a publish
-- looks in each (about 1.4 µs per partition measured; 38 day partitions made
-- the publish of an absent id 14× slower than one table, ~6 week ones do not).
--
-- The one duplicate Postgres cannot stop is the same event_id published at
-- the same moment by two transactions on either side of the week's switch;
-- every other duplicate, concurrent or not, is skipped as before.
--
-- A week is dropped only when its newest event is past retention, none of its
-- events is still waiting for its fan-out (or set aside), no delivery still in
-- the queue needs its body, and the sequence has moved past it
-- (webhook_events_drop). Rows already here are kept in one partition of their
-- own, `webhook_events_carried`, dropped by the same rule.

-- What is bound to the table's row type goes, and comes back below, bound to
-- the new table: three functions (saved as their own definitions, unchanged)
-- and the set-aside view.
CREATE TEMP TABLE saved_functions ON COMMIT DROP AS
    SELECT pg_get_functiondef(p.oid) AS def
    FROM pg_proc p
    WHERE p.oid IN ('webhook_fan_out(webhook_events[])'::regprocedure,
                    'webhook_targets(webhook_events, text, integer)'::regprocedure)
    ORDER BY p.proname = 'webhook_fan_out'; -- it calls webhook_targets
DROP VIEW webhook_events_set_aside;
DROP FUNCTION webhook_fan_out(webhook_events[]);
DROP FUNCTION webhook_targets(webhook_events, text, integer);
DROP FUNCTION webhook_publish(text, jsonb, text, timestamptz);

ALTER TABLE webhook_events RENAME TO webhook_events_unpartitioned;

-- The same columns in the same order (the row type is part of the functions'
-- contracts); the identity is added once the old table, which owns the
-- sequence's name, is gone.
CREATE TABLE webhook_events (
    id               bigint NOT NULL,
    event_id         text NOT NULL
                     DEFAULT 'evt_' || replace(gen_random_uuid()::text, '-', '')
                     CONSTRAINT webhook_events_event_id_check CHECK (length(event_id) BETWEEN 1 AND 255),
    event_type       text NOT NULL,
    data             jsonb NOT NULL DEFAULT '{}'::jsonb,
    occurred_at      timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    dispatched_at    timestamptz,
    body             text,
    fanned_out_to    text,
    fan_out_failures integer NOT NULL DEFAULT 0,
    fan_out_error    text,
    set_aside_at     timestamptz
) PARTITION BY RANGE (id);

-- The first id of the week that `day` is in.
CREATE FUNCTION webhook_events_week_base(day date) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(date_trunc('week', day), 'YYYYMMDD')::bigint * 10000000000
$$;

CREATE TABLE webhook_events_carried PARTITION OF webhook_events
    FOR VALUES FROM (MINVALUE) TO (webhook_events_week_base((now() AT TIME ZONE 'UTC')::date));

INSERT INTO webhook_events
    (id, event_id, event_type, data, occurred_at, created_at, dispatched_at, body, fanned_out_to,
     fan_out_failures, fan_out_error, set_aside_at)
SELECT id, event_id, event_type, data, occurred_at, created_at, dispatched_at, body, fanned_out_to,
       fan_out_failures, fan_out_error, set_aside_at
FROM webhook_events_unpartitioned;

DROP TABLE webhook_events_unpartitioned;

ALTER TABLE webhook_events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_pkey PRIMARY KEY (id);
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_event_type_fkey
    FOREIGN KEY (event_type) REFERENCES webhook_event_types (name);
CREATE UNIQUE INDEX webhook_events_carried_event_id_key ON webhook_events_carried (event_id);
CREATE INDEX webhook_events_created_brin ON webhook_events USING brin (created_at);
CREATE INDEX webhook_events_undispatched_idx ON webhook_events (id)
    WHERE dispatched_at IS NULL AND set_aside_at IS NULL;
CREATE INDEX webhook_events_set_aside_idx ON webhook_events (id)
    WHERE dispatched_at IS NULL AND set_aside_at IS NOT NULL;

-- As before (migrations 9 and 11): the type is checked and a stored event_id
-- skipped, in the publishing statement; one NOTIFY per statement.
CREATE TRIGGER webhook_events_check_type
    BEFORE INSERT ON webhook_events
    FOR EACH ROW WHEN (current_setting('smartdrop.intake', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION webhook_events_check_type();
CREATE TRIGGER webhook_events_notify
    AFTER INSERT ON webhook_events
    FOR EACH STATEMENT WHEN (current_setting('smartdrop.intake', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION webhook_notify('webhook_events');

-- The week partitions from the week of `from_day` through the week of
-- `to_day` that do not exist yet, named webhook_events_<Monday as YYYYMMDD>
-- (the service creates each week when it starts, not ahead: a week analyzed
-- while empty makes Postgres plan its event_id lookups as scans, and a
-- connection that plans one early in the week keeps the plan);
-- created empty and attached (no lock that blocks readers or writers). Then,
-- if the current week's partition existed before this call (so it is
-- committed and every session can route to it), the sequence is moved up to
-- its range. Returns how many partitions it created. One caller at a time
-- (the history's lock): two moves of the sequence could hand out an id twice.
CREATE FUNCTION webhook_events_prepare(from_day date, to_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    monday  date;
    part    text;
    current text := 'webhook_events_' || to_char(date_trunc('week', now() AT TIME ZONE 'UTC'), 'YYYYMMDD');
    ready   boolean;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('webhook_history_partitions'));
    ready := to_regclass(current) IS NOT NULL;
    FOR monday IN SELECT generate_series(date_trunc('week', from_day), to_day, interval '7 days')::date LOOP
        part := 'webhook_events_' || to_char(monday, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        EXECUTE format('CREATE TABLE %I (LIKE webhook_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        EXECUTE format('CREATE UNIQUE INDEX %I ON %I (event_id)', part || '_event_id_key', part);
        EXECUTE format('ALTER TABLE webhook_events ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', part,
                       webhook_events_week_base(monday), webhook_events_week_base(monday + 7));
        created := created + 1;
    END LOOP;
    IF ready THEN
        PERFORM setval('webhook_events_id_seq', webhook_events_week_base((now() AT TIME ZONE 'UTC')::date), false)
        FROM webhook_events_id_seq s
        WHERE s.last_value < webhook_events_week_base((now() AT TIME ZONE 'UTC')::date);
    END IF;
    RETURN created;
END $$;

-- The event partitions retention may drop, oldest first: every id in the
-- partition's range is below the sequence (nothing new can land in it), and
-- its newest event (highest id) was accepted `retention_days` or more ago (or
-- it is empty). Whether anything still needs it is checked by the drop.
CREATE FUNCTION webhook_events_expired(retention_days integer)
RETURNS TABLE (partition_name text, newest timestamptz) LANGUAGE plpgsql STABLE AS $$
DECLARE
    part  record;
    -- every id handed out from now on is at least this
    seq   bigint := (SELECT s.last_value FROM webhook_events_id_seq s);
    upper bigint;
BEGIN
    FOR part IN
        SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'webhook_events'::regclass
    LOOP
        upper := substring(part.bound FROM 'TO \(''?(-?[0-9]+)''?\)')::bigint;
        CONTINUE WHEN upper IS NULL OR upper > seq;
        EXECUTE format('SELECT created_at FROM %I ORDER BY id DESC LIMIT 1', part.name) INTO newest;
        CONTINUE WHEN newest > now() - make_interval(days => retention_days);
        partition_name := part.name;
        RETURN NEXT;
    END LOOP;
END $$;

-- Drops one event partition that webhook_events_expired lists, unless an
-- event in it still waits for its fan-out (or is set aside: it can be retried
-- by hand) or a delivery in the queue still needs its body. Returns 'dropped',
-- 'gone' (no longer listed: dropped by another instance) or 'kept: <why>'.
-- The checks run under an exclusive lock on webhook_events (every reader of an
-- event's body, the hand retry included, takes a lock it conflicts with), so
-- nothing can start needing the week between the check and the drop; the lock
-- is waited for at most a second and held for the checks and the drop (a scan
-- of the queue: milliseconds while it is small). A cheap check first keeps
-- the lock for weeks that can go.
CREATE FUNCTION webhook_events_drop(partition_name text, retention_days integer) RETURNS text
LANGUAGE plpgsql SET lock_timeout = '1s' AS $$
DECLARE
    lo  bigint;
    hi  bigint;
    why text;
    pass integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('webhook_history_partitions'));
    FOR pass IN 1..2 LOOP
        IF pass = 2 THEN
            LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM webhook_events_expired(retention_days) x
                       WHERE x.partition_name = webhook_events_drop.partition_name) THEN
            RETURN 'gone';
        END IF;
        EXECUTE format('SELECT min(id), max(id) FROM %I', partition_name) INTO lo, hi;
        -- (in the two shapes the partial indexes have: a plain `dispatched_at
        -- IS NULL` matches neither and reads the whole week)
        EXECUTE format('SELECT count(*) || '' events wait for their fan-out or are set aside''
                        FROM (SELECT 1 FROM %1$I WHERE dispatched_at IS NULL AND set_aside_at IS NULL
                              UNION ALL
                              SELECT 1 FROM %1$I WHERE dispatched_at IS NULL AND set_aside_at IS NOT NULL) u
                        HAVING count(*) > 0', partition_name) INTO why;
        IF why IS NULL THEN
            SELECT count(*) || ' deliveries in the queue need their events' INTO why
            FROM webhook_deliveries_queue q WHERE q.event_seq BETWEEN lo AND hi HAVING count(*) > 0;
        END IF;
        IF why IS NOT NULL THEN
            RETURN 'kept: ' || why;
        END IF;
    END LOOP;
    EXECUTE format('DROP TABLE %I', partition_name);
    RETURN 'dropped';
END $$;

-- This week; the sequence moves to its range.
SELECT webhook_events_prepare((now() AT TIME ZONE 'UTC')::date, (now() AT TIME ZONE 'UTC')::date);
SELECT setval('webhook_events_id_seq', webhook_events_week_base((now() AT TIME ZONE 'UTC')::date), false);

-- A stored event_id is skipped. `ON CONFLICT` now names no key: there is no
-- key on event_id across partitions; the trigger's look in every partition
-- skips one stored earlier, the partition's own index one stored concurrently.
CREATE FUNCTION webhook_publish(
    event_type  text,
    data        jsonb,
    event_id    text DEFAULT NULL,
    occurred_at timestamptz DEFAULT now()
) RETURNS webhook_events LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    published webhook_events;
BEGIN
    INSERT INTO webhook_events (event_type, event_id, data, occurred_at)
    VALUES (
        $1,
        COALESCE($3, 'evt_' || replace(gen_random_uuid()::text, '-', '')),
        COALESCE($2, '{}'::jsonb),
        COALESCE($4, now())
    )
    ON CONFLICT DO NOTHING
    RETURNING * INTO published;

    IF NOT FOUND THEN
        SELECT * INTO published FROM webhook_events e WHERE e.event_id = $3;
    END IF;
    RETURN published;
END $$;

DO $$
DECLARE
    f text;
BEGIN
    FOR f IN SELECT def FROM saved_functions LOOP
        EXECUTE f;
    END LOOP;
END $$;

CREATE VIEW webhook_events_set_aside AS
    SELECT event_id, event_type, created_at, fan_out_failures, fan_out_error, set_aside_at, fanned_out_to
    FROM webhook_events
    WHERE dispatched_at IS NULL AND set_aside_at IS NOT NULL;
