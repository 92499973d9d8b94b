-- The event-type catalogue. Extend it with a plain INSERT; no redeploy needed.
CREATE TABLE webhook_event_types (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$'),
    description text NOT NULL DEFAULT ''
);

INSERT INTO webhook_event_types (name, description) VALUES
    ('pool.created',             'a new farming pool was created on-chain'),
    ('pool.assets_locked',       'assets were locked into a pool'),
    ('pool.assets_unlocked',     'assets were unlocked from a pool'),
    ('pool.rewards_distributed', 'a pool distributed rewards to participants'),
    ('pool.closed',              'a pool was closed'),
    ('price.alert',              'a price alert fired');
