CREATE TABLE webhooks (
    id          text PRIMARY KEY DEFAULT 'wh_' || replace(gen_random_uuid()::text, '-', ''),
    url         text NOT NULL,
    -- patterns: an exact catalogue type, '*', or 'prefix.*' (validated by the API)
    events      text[] NOT NULL CHECK (cardinality(events) > 0),
    secret      text NOT NULL,
    description text,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Cursor pagination, newest first: (created_at, id) is the cursor.
CREATE INDEX webhooks_created_idx ON webhooks (created_at DESC, id DESC);
