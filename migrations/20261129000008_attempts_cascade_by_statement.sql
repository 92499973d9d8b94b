-- An attempt row belongs to its delivery, but a foreign key checked it with
-- one lookup (and a row lock) in webhook_deliveries per attempt recorded:
-- about 5 % of the database time of every delivery in the throughput
-- profile. Attempts are only written by the completer, in the statement that
-- updates their delivery under its lease (so the delivery exists); what the
-- key still did, deleting attempts with their delivery (retention, a deleted
-- webhook), is done here once per deleting statement.
ALTER TABLE webhook_delivery_attempts DROP CONSTRAINT webhook_delivery_attempts_delivery_id_fkey;

CREATE FUNCTION webhook_delivery_attempts_cascade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhook_delivery_attempts a USING old_rows o WHERE a.delivery_id = o.id;
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_delivery_attempts_cascade
    AFTER DELETE ON webhook_deliveries REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_delivery_attempts_cascade();
