-- The HTTP intake's group commit checks event types itself, before a group
-- is written (so one request's unknown type fails that request alone), and
-- inserts with ON CONFLICT (event_id) DO NOTHING. Its connections say so
-- with a setting, and the per-row check is skipped for them: as a WHEN
-- clause, a skipped row costs no PL/pgSQL call (it was half the cost of a
-- 500-event insert). Every other writer (the indexer's SQL, webhook_publish)
-- still gets the check and its clear error; the foreign key to
-- webhook_event_types stays the backstop for everyone.
DROP TRIGGER webhook_events_check_type ON webhook_events;
CREATE TRIGGER webhook_events_check_type
    BEFORE INSERT ON webhook_events
    FOR EACH ROW
    WHEN (current_setting('smartdrop.types_checked', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION webhook_events_check_type();
