-- An unknown event type is refused even when its event_id is already
-- stored: the type check comes before the duplicate check, so a producer
-- that sends a wrong type with a reused event_id hears about it instead of
-- getting the earlier event's id back.
CREATE OR REPLACE FUNCTION webhook_events_check_type() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_event_types WHERE name = NEW.event_type) THEN
        RAISE EXCEPTION 'unknown event type "%"', NEW.event_type
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'known types are listed in webhook_event_types; add one with INSERT INTO webhook_event_types';
    END IF;
    IF EXISTS (SELECT 1 FROM webhook_events WHERE event_id = NEW.event_id) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;
