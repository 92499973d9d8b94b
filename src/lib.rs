//! smartdrop-webhooks: a Postgres-native webhook delivery service.
//!
//! Data flows one way, and the stages meet only in tables and through NOTIFY:
//!
//! ```text
//! indexer tx: SELECT webhook_publish(…) | INSERT INTO webhook_events ─┐ (trigger: NOTIFY webhook_events on commit)
//! POST /api/v1/events, `publish` CLI ── intake::publish ─────────────┤
//!                                                                    ▼
//! fanout   claim undispatched events (SKIP LOCKED) → one delivery per active matching webhook,
//!          body serialized once; event marked dispatched; one transaction
//!                                                                    ▼
//! queue    claim due deliveries (SKIP LOCKED) with a lease; commit before any HTTP
//!                                                                    ▼
//! delivery sign → send (vetted addresses, timeout, 4 KiB excerpt) → classify → record (fenced on the lease)
//! ```
pub mod api;
pub mod catalogue;
pub mod cli;
pub mod config;
pub mod db;
pub mod delivery;
pub mod domain;
pub mod fanout;
pub mod intake;
pub mod metrics;
pub mod pipeline;
pub mod queue;
pub mod reporting;
pub mod shutdown;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod wakeup;
pub mod webhooks;
