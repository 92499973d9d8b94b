//! The delivery loop: claim due deliveries in batches while work is due and
//! permits are free, send each in its own task, and stop claiming on
//! shutdown. Concurrency is a semaphore, independent of the pool size,
//! because no transaction is held across a send.
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::Deliverer;
use crate::metrics::Metrics;
use crate::queue::{self, Finished};

#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    pub batch: u32,
    pub concurrency: u32,
    pub poll: Duration,
    pub lease: Duration,
    /// How long shutdown waits for in-flight sends before releasing them.
    pub drain: Duration,
}

pub struct Worker {
    pool: PgPool,
    deliverer: Deliverer,
    config: WorkerConfig,
    wake: Arc<Notify>,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    in_flight: Arc<Mutex<HashSet<Uuid>>>,
    metrics: Arc<Metrics>,
    /// Finished attempts go to the completer, which records them in batches.
    completed: mpsc::Sender<Finished>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum WorkOutcome {
    /// Claimed this many and started sending them.
    Started(usize),
    /// Nothing due (or no free permit).
    Idle,
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
            deliverer,
            permits: Arc::new(Semaphore::new(config.concurrency as usize)),
            config,
            wake,
            tasks: TaskTracker::new(),
            in_flight: Arc::default(),
            metrics,
            completed,
        }
    }

    /// Claims one batch sized to the free permits and spawns the sends.
    pub async fn run_once(&self) -> sqlx::Result<WorkOutcome> {
        let free = self
            .permits
            .available_permits()
            .min(self.config.batch as usize);
        if free == 0 {
            return Ok(WorkOutcome::Idle);
        }
        let lease_ms = self.config.lease.as_millis() as i64;
        // `taken` counts an inactive webhook's rows too (failed by the claim,
        // not sent): they still mean the queue had that much due work.
        let (claimed, taken) =
            queue::store::claim_due_counted(&self.pool, free as i64, lease_ms).await?;
        for delivery in claimed {
            // This loop is the only acquirer, so the permits counted above are still free.
            let permit = self
                .permits
                .clone()
                .try_acquire_owned()
                .expect("permit counted as free");
            let deliverer = self.deliverer.clone();
            let in_flight = self.in_flight.clone();
            in_flight.lock().unwrap().insert(delivery.lease_token);
            let metrics = self.metrics.clone();
            let completed = self.completed.clone();
            metrics.in_flight.increment(1.0);
            self.tasks.spawn(async move {
                let finished = deliverer.attempt(&delivery).await;
                if completed.send(finished).await.is_err() {
                    tracing::error!(delivery = %delivery.id, "the completer is gone; the delivery is sent again when its lease expires");
                }
                in_flight.lock().unwrap().remove(&delivery.lease_token);
                metrics.in_flight.decrement(1.0);
                drop(permit);
            });
        }
        Ok(if taken == 0 {
            WorkOutcome::Idle
        } else {
            WorkOutcome::Started(taken)
        })
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let low_water = (self.config.batch.min(self.config.concurrency) as usize / 2).max(1);
        'outer: loop {
            // Keep claiming while full batches come back.
            loop {
                if shutdown.is_cancelled() {
                    break 'outer;
                }
                if self.permits.available_permits() < low_water {
                    if self.permits.available_permits() == 0 {
                        tokio::select! {
                            _ = shutdown.cancelled() => break 'outer,
                            p = self.permits.clone().acquire_owned() => drop(p),
                        }
                    }
                    // Under saturation sends finish one by one; a moment's
                    // wait lets one claim fetch a batch rather than a row.
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'outer,
                        _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                    }
                }
                let want = self
                    .permits
                    .available_permits()
                    .min(self.config.batch as usize);
                match self.run_once().await {
                    Ok(WorkOutcome::Started(n)) if n >= want => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming deliveries failed; retrying at the next poll");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tick.tick() => {}
            }
        }
        self.drain().await;
    }

    /// Waits for in-flight sends (each bounded by the request timeout), then
    /// gives back the leases of any that did not finish in time.
    async fn drain(self) {
        self.tasks.close();
        if tokio::time::timeout(self.config.drain, self.tasks.wait())
            .await
            .is_err()
        {
            let tokens: Vec<Uuid> = self.in_flight.lock().unwrap().iter().copied().collect();
            match queue::store::release(&self.pool, &tokens).await {
                Ok(n) => tracing::warn!(released = n, "shutdown: released unfinished deliveries"),
                Err(e) => {
                    tracing::warn!(error = %e, "shutdown: could not release leases; they expire on their own")
                }
            }
        }
    }
}
