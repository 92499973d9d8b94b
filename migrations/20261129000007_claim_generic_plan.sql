-- The claim's statements take the webhook id, the batch and the lease as
-- PL/pgSQL variables. With the default plan cache mode Postgres keeps
-- re-planning them for each call (their custom plans look cheaper than the
-- generic one), which cost about a tenth of every claim in pgbench (0.90 ms
-- against 1.00 ms per claim of 25, one webhook with 200,000 due rows). The
-- generic plans are the index scans the function is written for.
ALTER FUNCTION webhook_claim(integer, double precision, text[], integer[], integer)
    SET plan_cache_mode = force_generic_plan;
