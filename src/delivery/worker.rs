//! The delivery loop: claim due deliveries in batches while work is due and
//! permits are free, send each in its own task, and stop claiming on
//! shutdown. Concurrency is a semaphore, independent of the pool size,
//! because no transaction is held across a send. Each webhook may hold only
//! its fair share of the permits (`queue::fairness`), so one slow endpoint
//! cannot occupy them all.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::Deliverer;
use crate::db;
use crate::metrics::Metrics;
use crate::queue::{self, Finished, fairness};

#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    pub batch: u32,
    pub concurrency: u32,
    pub poll: Duration,
    pub lease: Duration,
    /// How long shutdown waits for in-flight sends before releasing them.
    pub drain: Duration,
}

/// What this instance is sending: leases to give back at shutdown, and how
/// many sends each webhook has in flight (its share of the permits).
#[derive(Default)]
struct InFlight {
    leases: HashSet<Uuid>,
    per_webhook: HashMap<String, usize>,
}

impl InFlight {
    fn start(&mut self, lease: Uuid, webhook: &str) {
        self.leases.insert(lease);
        *self.per_webhook.entry(webhook.to_owned()).or_default() += 1;
    }

    fn end(&mut self, lease: &Uuid, webhook: &str) {
        self.leases.remove(lease);
        if let Some(n) = self.per_webhook.get_mut(webhook) {
            *n -= 1;
            if *n == 0 {
                self.per_webhook.remove(webhook);
            }
        }
    }
}

pub struct Worker {
    pool: PgPool,
    config: WorkerConfig,
    wake: Arc<Notify>,
    senders: Senders,
}

/// This instance's send slots and what runs in them, shared by the claim
/// loop and the fan-out (which hands over deliveries it leased itself).
#[derive(Clone)]
pub struct Senders {
    deliverer: Deliverer,
    concurrency: u32,
    permits: Arc<Semaphore>,
    /// Notified when a send ends: a webhook at its share may take another.
    slot_freed: Arc<Notify>,
    tasks: TaskTracker,
    in_flight: Arc<Mutex<InFlight>>,
    metrics: Arc<Metrics>,
    /// Finished attempts go to the completer, which records them in batches.
    completed: mpsc::Sender<Finished>,
}

/// Send slots taken ahead of a claim (or a fan-out that leases): one permit
/// per delivery it may start, and the fair share of each webhook.
pub struct Reserved {
    permits: Option<OwnedSemaphorePermit>,
    pub rooms: fairness::Rooms,
    /// Set for the fan-out's reservation (all free slots): giving back what
    /// it did not use wakes the claim loop, which may have found none free.
    /// Not for the claim loop's own (it would wake itself for nothing).
    freed: Option<Arc<Notify>>,
}

impl Reserved {
    pub fn count(&self) -> usize {
        self.permits.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Gives back the slots not used (`start` took the rest).
    fn give_back(&mut self) {
        if self.permits.take().is_some()
            && let Some(freed) = &self.freed
        {
            freed.notify_one();
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl Senders {
    /// Takes every free slot for a fan-out that leases (see `Reserved`).
    pub fn reserve_all(&self) -> Reserved {
        let mut reserved = self.reserve(usize::MAX);
        reserved.freed = Some(self.slot_freed.clone());
        reserved
    }

    /// Takes up to `max` free slots and the rooms to fill them with.
    pub fn reserve(&self, max: usize) -> Reserved {
        let free = self.permits.available_permits().min(max);
        let permits = (free > 0)
            .then(|| {
                self.permits
                    .clone()
                    .try_acquire_many_owned(free as u32)
                    .ok()
            })
            .flatten();
        // The rooms as they were before these slots were taken.
        let rooms = fairness::rooms(
            self.concurrency as usize,
            free + self.permits.available_permits(),
            &self.in_flight.lock().unwrap().per_webhook,
        );
        Reserved {
            permits,
            rooms,
            freed: None,
        }
    }

    /// Sends each delivery in a slot of `reserved` (as many as it holds;
    /// the rest of the slots are given back).
    pub fn start(&self, mut reserved: Reserved, deliveries: Vec<queue::Claimed>) -> usize {
        let mut permits = reserved.permits.take();
        let mut started = 0;
        for delivery in deliveries {
            let permit = match permits.take() {
                Some(mut held) if held.num_permits() > 1 => {
                    let one = held.split(1).expect("more than one permit held");
                    permits = Some(held);
                    one
                }
                Some(last) => last,
                None => {
                    tracing::error!(delivery = %delivery.id, "more deliveries than reserved slots; it is sent when its lease expires");
                    continue;
                }
            };
            self.spawn(delivery, permit);
            started += 1;
        }
        // What is left goes back (with a notice for the fan-out's).
        reserved.permits = permits;
        reserved.give_back();
        started
    }

    fn spawn(&self, delivery: queue::Claimed, permit: OwnedSemaphorePermit) {
        let deliverer = self.deliverer.clone();
        let in_flight = self.in_flight.clone();
        in_flight
            .lock()
            .unwrap()
            .start(delivery.lease_token, &delivery.webhook_id);
        let metrics = self.metrics.clone();
        let completed = self.completed.clone();
        let slot_freed = self.slot_freed.clone();
        metrics.in_flight.increment(1.0);
        self.tasks.spawn(async move {
            let finished = deliverer.attempt(&delivery).await;
            if completed.send(finished).await.is_err() {
                tracing::error!(delivery = %delivery.id, "the completer is gone; the delivery is sent again when its lease expires");
            }
            in_flight
                .lock()
                .unwrap()
                .end(&delivery.lease_token, &delivery.webhook_id);
            metrics.in_flight.decrement(1.0);
            drop(permit);
            slot_freed.notify_one();
        });
    }

    /// Whether some webhook is at its share of the slots now.
    fn any_at_share(&self) -> bool {
        fairness::rooms(
            self.concurrency as usize,
            self.permits.available_permits(),
            &self.in_flight.lock().unwrap().per_webhook,
        )
        .any_full()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct WorkOutcome {
    /// Deliveries claimed and started.
    pub started: usize,
    /// Some webhook is at its share of the permits: the end of one of its
    /// sends may let it take more, so the loop listens for that too.
    pub at_share: bool,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        deliverer: Deliverer,
        config: WorkerConfig,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
        completed: mpsc::Sender<Finished>,
    ) -> Self {
        Self {
            pool,
            config,
            wake,
            senders: Senders {
                deliverer,
                concurrency: config.concurrency,
                permits: Arc::new(Semaphore::new(fairness::slots(config.concurrency as usize))),
                slot_freed: Arc::new(Notify::new()),
                tasks: TaskTracker::new(),
                in_flight: Arc::default(),
                metrics,
                completed,
            },
        }
    }

    /// The send slots, for the fan-out to hand leased deliveries to.
    pub fn senders(&self) -> Senders {
        self.senders.clone()
    }

    /// Claims one batch sized to the free permits and spawns the sends.
    pub async fn run_once(&self, bounds: &db::Bounds) -> Result<WorkOutcome, db::Interrupted> {
        let reserved = self.senders.reserve(self.config.batch as usize);
        let free = reserved.count();
        if free == 0 {
            // Held by the fan-out for a moment, or all busy: a slot coming
            // back wakes the loop.
            return Ok(WorkOutcome {
                started: 0,
                at_share: true,
            });
        }
        let lease_ms = self.config.lease.as_millis() as i64;
        let rooms = reserved.rooms.clone();
        let claimed = bounds
            .run(&self.pool, move |conn| {
                let rooms = rooms.clone();
                Box::pin(
                    async move { queue::store::claim(conn, free as i64, lease_ms, &rooms).await },
                )
            })
            .await?;
        let started = self.senders.start(reserved, claimed);
        // After this claim's sends started: is some webhook at its share now?
        Ok(WorkOutcome {
            started,
            at_share: self.senders.any_at_share(),
        })
    }

    /// Claims until `bounds.shutdown`; each claim is bounded by `bounds`.
    pub async fn run(self, bounds: db::Bounds) {
        let shutdown = bounds.shutdown.clone();
        let mut tick = tokio::time::interval(self.config.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let low_water = (self.config.batch.min(self.config.concurrency) as usize / 2).max(1);
        'outer: loop {
            let mut at_share = false;
            // Keep claiming while claims bring work (a short batch no longer
            // means the queue is empty: shares, throttles, FIFO cut it), until
            // a webhook reaches its share; then the end of a send wakes us.
            loop {
                if shutdown.is_cancelled() {
                    break 'outer;
                }
                if self.senders.permits.available_permits() < low_water {
                    if self.senders.permits.available_permits() == 0 {
                        tokio::select! {
                            _ = shutdown.cancelled() => break 'outer,
                            p = self.senders.permits.clone().acquire_owned() => drop(p),
                        }
                    }
                    // Under saturation sends finish one by one; a moment's
                    // wait lets one claim fetch a batch rather than a row.
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'outer,
                        _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                    }
                }
                let claimed = self.run_once(&bounds).await;
                if claimed.is_ok() {
                    self.senders.metrics.pipeline.claimed();
                }
                match claimed {
                    Ok(outcome) if outcome.started > 0 && !outcome.at_share => continue,
                    Ok(outcome) => {
                        at_share = outcome.at_share;
                        break;
                    }
                    Err(db::Interrupted::ShuttingDown) => break 'outer,
                    // A row it was locking moved partitions under it (a
                    // result committed meanwhile): nothing is wrong, claim again.
                    Err(db::Interrupted::Database(e)) if db::row_moved(&e) => {
                        tracing::debug!(error = %e, "claim met a row that had just moved; claiming again");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming deliveries failed; retrying at the next poll");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = self.senders.slot_freed.notified(), if at_share => {}
                _ = tick.tick() => {}
            }
        }
        self.drain().await;
    }

    /// Waits for in-flight sends (each bounded by the request timeout) to
    /// hand their results to the completer. A lease is never given back here:
    /// every delivery in flight has been sent (or is being sent), so making it
    /// due at once would send it again for certain. One whose result cannot
    /// be recorded is sent again when its lease expires (at least once).
    async fn drain(self) {
        self.senders.tasks.close();
        if tokio::time::timeout(self.config.drain, self.senders.tasks.wait())
            .await
            .is_err()
        {
            let unrecorded = self.senders.in_flight.lock().unwrap().leases.len();
            tracing::warn!(
                unrecorded,
                "shutdown: sends whose results could not be handed over; they are sent again when their leases expire"
            );
        }
    }
}
