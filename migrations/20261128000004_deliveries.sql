-- The delivery queue: one row per (event, webhook). The body is serialized
-- once, at fan-out, and sent byte-identical on every attempt.
CREATE TABLE webhook_deliveries (
    id               text PRIMARY KEY DEFAULT 'dlv_' || replace(gen_random_uuid()::text, '-', ''),
    webhook_id       text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id         text NOT NULL,
    event_type       text NOT NULL,
    body             text NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'success', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    -- When the row is next claimable. A claim moves it to the lease expiry, so
    -- an expired lease (a crashed worker) simply makes the row due again.
    next_retry_at    timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz,
    -- Fences every write after a claim: a worker whose lease was taken over
    -- cannot overwrite the new owner's result.
    lease_token      uuid,
    response_status  integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz
);

-- The claim query walks this index in next_retry_at order and stops after a
-- batch; finished rows leave it, so it stays as small as the live queue.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_retry_at) WHERE status = 'pending';
-- A webhook's deliveries, newest first (listing and cursor pagination).
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, created_at DESC, id DESC);
-- Every claim and every result rewrites a delivery row (next_retry_at and
-- status change, so the update cannot be HOT) and so touches every index:
-- keep them few. No UNIQUE (event_id, webhook_id): an event fans out once
-- because the fan-out claims it with SKIP LOCKED and marks it dispatched in
-- the same transaction.

-- Wakes the workers once per statement that enqueues something.
CREATE TRIGGER webhook_deliveries_notify
    AFTER INSERT ON webhook_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_notify('webhook_deliveries');

-- A queue table: every row is rewritten twice, and the dead entries that
-- pile up at the head of webhook_deliveries_due_idx slow every claim until
-- vacuum removes them; vacuum after 1 % of the table changed, not 20 %.
ALTER TABLE webhook_deliveries SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);

-- Every attempt, for the delivery log and the reporting views.
CREATE TABLE webhook_delivery_attempts (
    delivery_id      text NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt          integer NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    response_status  integer,
    -- a short machine-readable kind: timeout, connect, forbidden_address, ...
    error_kind       text,
    error            text,
    response_excerpt text,
    PRIMARY KEY (delivery_id, attempt)
);
