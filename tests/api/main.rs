//! One integration binary: the real app, a real Postgres (a fresh database per
//! test) and real HTTP receivers on loopback.
mod contract;
mod delivery;
mod group_commit;
mod helpers;
mod intake;
mod isolation;
mod operator;
mod queue;
mod rate_limit;
mod reporting;
mod retries;
mod ssrf;
mod storage;
mod webhooks;
