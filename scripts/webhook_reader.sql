-- A read-only role for dashboards and analysts: the reporting views and
-- functions, the delivery log and the queue, every column of `webhooks`
-- except the signing secrets (`secret`, `previous_secret`).
--
-- Not a migration: creating roles needs a privilege the service's own role
-- should not have. Run it once per database as a role that may create roles
-- and owns the tables (after `migrate`; run it again after upgrades that add
-- views), then give a login role its membership:
--
--   psql "$DATABASE_URL" -f scripts/webhook_reader.sql
--   psql "$DATABASE_URL" -c "CREATE ROLE grafana LOGIN PASSWORD '…' IN ROLE webhook_reader"
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'webhook_reader') THEN
        CREATE ROLE webhook_reader NOLOGIN;
    END IF;
END $$;

GRANT USAGE ON SCHEMA public TO webhook_reader;

GRANT SELECT ON webhook_event_types, webhook_events, webhook_deliveries, webhook_delivery_attempts,
                webhook_endpoint_state
    TO webhook_reader;

-- Column by column: the secrets stay out. (A column added later is not
-- readable until this script grants it.)
GRANT SELECT (id, url, events, description, active, created_at, updated_at, rate_limit, ordering,
              disabled_reason, disabled_at)
    ON webhooks TO webhook_reader;

-- Views run with their owner's rights; none of them shows a secret.
GRANT SELECT ON webhook_health_24h, webhook_failure_reasons_24h, webhook_delivery_volume_hourly,
                webhook_due_backlog, webhook_open_circuits, webhook_disabled
    TO webhook_reader;
