-- The HTTP intake's group commit writes on connections of its own, which
-- say so with a setting (`smartdrop.intake = on`, see intake::connect_options),
-- and two per-statement costs are skipped for them. As WHEN clauses, a
-- skipped trigger costs no PL/pgSQL call.
--
-- 1. The per-row type check: the intake checks types itself before a group
--    is written (so one request's unknown type fails that request alone) and
--    inserts with ON CONFLICT (event_id) DO NOTHING. The check was half the
--    cost of a 500-event insert. Every other writer (the indexer's SQL,
--    webhook_publish) still gets it and its clear error; the foreign key to
--    webhook_event_types stays the backstop for everyone.
DROP TRIGGER webhook_events_check_type ON webhook_events;
CREATE TRIGGER webhook_events_check_type
    BEFORE INSERT ON webhook_events
    FOR EACH ROW
    WHEN (current_setting('smartdrop.intake', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION webhook_events_check_type();

-- 2. NOTIFY webhook_events: the intake fans its events out in the statement
--    that inserts them, so there is nothing for a sweep to find. (Its
--    deliveries still NOTIFY webhook_deliveries, for every instance's worker.)
DROP TRIGGER webhook_events_notify ON webhook_events;
CREATE TRIGGER webhook_events_notify
    AFTER INSERT ON webhook_events
    FOR EACH STATEMENT
    WHEN (current_setting('smartdrop.intake', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION webhook_notify('webhook_events');
