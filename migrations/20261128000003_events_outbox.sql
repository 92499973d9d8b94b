-- The transactional outbox the indexer writes to, inside its own transaction.
CREATE TABLE webhook_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      text NOT NULL UNIQUE
                  DEFAULT 'evt_' || replace(gen_random_uuid()::text, '-', '')
                  CHECK (length(event_id) BETWEEN 1 AND 255),
    event_type    text NOT NULL REFERENCES webhook_event_types (name),
    data          jsonb NOT NULL DEFAULT '{}'::jsonb,
    occurred_at   timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    dispatched_at timestamptz
);

-- The fan-out sweep reads only undispatched events, oldest first; this partial
-- index stays as small as the backlog, however long the history grows.
CREATE INDEX webhook_events_undispatched_idx ON webhook_events (id) WHERE dispatched_at IS NULL;

-- A clear error for an unknown type, raised in the publishing statement itself
-- (the foreign key above is the backstop). A plain INSERT of an event_id that
-- is already stored is skipped rather than failing the indexer's transaction,
-- so a re-published event fans out once whichever way it was published (a
-- concurrent duplicate still meets the UNIQUE constraint).
CREATE FUNCTION webhook_events_check_type() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhook_events WHERE event_id = NEW.event_id) THEN
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM webhook_event_types WHERE name = NEW.event_type) THEN
        RAISE EXCEPTION 'unknown event type "%"', NEW.event_type
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'known types are listed in webhook_event_types; add one with INSERT INTO webhook_event_types';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER webhook_events_check_type
    BEFORE INSERT ON webhook_events
    FOR EACH ROW EXECUTE FUNCTION webhook_events_check_type();

-- One NOTIFY per statement, not per row, on the channel named by the trigger;
-- Postgres delivers it only on commit, so a rolled-back publish wakes nobody.
CREATE FUNCTION webhook_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_events_notify
    AFTER INSERT ON webhook_events
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_notify('webhook_events');

-- Publish an event. Idempotent on event_id: a second call with the same id
-- returns the existing row and fans out nothing more.
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
    ON CONFLICT (event_id) DO NOTHING
    RETURNING * INTO published;

    IF NOT FOUND THEN
        SELECT * INTO published FROM webhook_events e WHERE e.event_id = $3;
    END IF;
    RETURN published;
END $$;
