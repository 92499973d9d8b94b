//! Group commit. Requests hand their events to a few committer tasks; each
//! takes whatever has queued up (no timer: while one group commits the next
//! gathers, so one request alone waits for nobody) and writes the whole
//! group in one transaction: type check, insert, fan-out, commit. Every
//! request is answered after that commit, with its own results, and with
//! nothing if the commit did not happen.
//!
//! One request's bad event must not fail the others: what can be checked
//! without writing (field rules; the catalogue: unknown or archived types,
//! JSON Schemas) is checked first, in the requester's task, and refused
//! alone. If the group's statement still fails on a value, each request is
//! written again on its own, so the failure lands on the request that caused
//! it, naming the event's index. A request is all or nothing either way.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::{Accepted, IntakeError, NewEvent, store};
use crate::catalogue::{Catalogue, TypeRefusal};
use crate::db::{self, Interrupted};
use crate::metrics::Metrics;

/// Most events one group transaction writes (a request is never split).
const MAX_GROUP_EVENTS: usize = 2000;

/// Why nothing of a request was written.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The request's event at `index` is invalid.
    #[error("events[{index}]: {error}")]
    Invalid { index: usize, error: IntakeError },
    /// The database failed or did not answer in time; the request may be
    /// sent again (with its `event_id`s, it is then written once). Shared by
    /// every request of the group it failed.
    #[error(transparent)]
    Database(Arc<Interrupted>),
}

impl From<Interrupted> for Refused {
    fn from(e: Interrupted) -> Self {
        Self::Database(Arc::new(e))
    }
}

type Reply = oneshot::Sender<Result<Vec<Accepted>, Refused>>;

struct Job {
    events: Vec<NewEvent>,
    reply: Reply,
}

impl Job {
    fn answer(self, result: Result<Vec<Accepted>, Refused>) {
        // The requester may have gone (client disconnected): nothing to do.
        let _ = self.reply.send(result);
    }
}

/// The handle requests publish through; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    jobs: mpsc::Sender<Job>,
    catalogue: Arc<Catalogue>,
}

impl Publisher {
    /// Starts `committers` tasks, each writing on a connection of `pool`;
    /// each transaction is bounded by `limit` from this side (a database
    /// that stops answering gets the requests a `503`, not a hang). The tasks
    /// end when the last handle is dropped.
    /// `chunk` is `WEBHOOK_FANOUT_CHUNK`: a group whose fan-out could pass it
    /// is left to the sweep (`store::publish`).
    pub fn start(
        pool: PgPool,
        committers: usize,
        limit: Duration,
        chunk: i64,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Checked against before a job is queued; read on the same
        // connections, with the same bound.
        let catalogue = Catalogue::new(pool.clone(), limit);
        let (jobs, queue) = mpsc::channel(1024);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..committers.max(1) {
            let committer = Committer {
                pool: pool.clone(),
                limit,
                chunk,
                metrics: metrics.clone(),
            };
            tokio::spawn(committer.run(queue.clone()));
        }
        Self { jobs, catalogue }
    }

    /// The catalogue this publisher checks events against (the API
    /// invalidates it when it changes a type).
    pub fn catalogue(&self) -> Arc<Catalogue> {
        self.catalogue.clone()
    }

    /// Writes `events` all or nothing, in one transaction (shared with other
    /// requests), and fans them out; answers after the commit, in order.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<Accepted>, Refused> {
        let checked = self
            .catalogue
            .check(events.iter().map(|e| (e.event_type.as_str(), e.data.get())))
            .await?;
        if let Err((index, refusal)) = checked {
            let error = match refusal {
                // Worded as the publishing trigger words it.
                TypeRefusal::Unknown => IntakeError::UnknownType(format!(
                    "unknown event type \"{}\"",
                    events[index].event_type
                )),
                TypeRefusal::Archived => IntakeError::Archived(events[index].event_type.clone()),
                schema => IntakeError::Schema(schema.to_string()),
            };
            return Err(Refused::Invalid { index, error });
        }
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Job { events, reply }).await.is_err() {
            return Err(Interrupted::ShuttingDown.into());
        }
        // A committer that drops the job without an answer (it cannot, short
        // of a panic) leaves the request unacknowledged, as a crash would.
        answer
            .await
            .unwrap_or(Err(Interrupted::ShuttingDown.into()))
    }
}

/// Types were checked against the catalogue before a job got here. Should
/// one vanish anyway (deleted in SQL), the foreign key refuses the write and
/// the group falls back to writing each request alone, where the refusal
/// reaches the right request.
struct Committer {
    pool: PgPool,
    limit: Duration,
    chunk: i64,
    metrics: Arc<Metrics>,
}

impl Committer {
    async fn run(self, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
        loop {
            let group = {
                let mut queue = queue.lock().await;
                let Some(first) = queue.recv().await else {
                    return;
                };
                let mut events = first.events.len();
                let mut group = vec![first];
                while events < MAX_GROUP_EVENTS {
                    let Ok(next) = queue.try_recv() else { break };
                    events += next.events.len();
                    group.push(next);
                }
                group
            };
            self.commit(group).await;
        }
    }

    async fn commit(&self, group: Vec<Job>) {
        let started = std::time::Instant::now();
        let (requests, events) = (
            group.len(),
            group.iter().map(|j| j.events.len()).sum::<usize>(),
        );
        self.write_group(group).await;
        tracing::debug!(
            requests,
            events,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "intake group written"
        );
    }

    async fn write_group(&self, group: Vec<Job>) {
        let jobs = refuse_invalid(group);
        if jobs.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.limit;
        let mut conn = match tokio::time::timeout_at(deadline, self.pool.acquire()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return answer_all(jobs, Interrupted::Database(e)),
            Err(_) => return answer_all(jobs, Interrupted::NoAnswer(self.limit)),
        };
        let ready = jobs;
        let events: Vec<&NewEvent> = ready.iter().flat_map(|j| j.events.iter()).collect();
        let written =
            tokio::time::timeout_at(deadline, write(&mut conn, &events, self.chunk)).await;
        drop(events);
        match written {
            Ok(Ok(fanned)) => self.answer_written(ready, fanned),
            Ok(Err(e)) if db::is_row_error(&e) => {
                // A value Postgres refused: write each job on its own so the
                // failure reaches only the job that sent it.
                let mut jobs = ready.into_iter();
                while let Some(job) = jobs.next() {
                    let alone = tokio::time::timeout(
                        self.limit,
                        write_alone(&mut conn, &job.events, self.chunk),
                    );
                    match alone.await {
                        Ok(Ok(fanned)) => self.answer_written(vec![job], fanned),
                        Ok(Err(refused)) => job.answer(Err(refused)),
                        Err(_) => {
                            conn.close_on_drop();
                            let rest: Vec<Job> = std::iter::once(job).chain(jobs).collect();
                            return answer_all(rest, Interrupted::NoAnswer(self.limit));
                        }
                    }
                }
            }
            Ok(Err(e)) => answer_all(ready, Interrupted::Database(e)),
            Err(_) => {
                // Committed or not, nobody is told it was: the producer sends
                // again, and its event_ids make that write once.
                conn.close_on_drop();
                answer_all(ready, Interrupted::NoAnswer(self.limit));
            }
        }
    }

    /// Answers each job with its events' ids and deliveries. An event_id
    /// repeated in the group counts its deliveries once, for the first.
    fn answer_written(&self, jobs: Vec<Job>, fanned: Vec<(String, i64)>) {
        self.metrics
            .events_dispatched
            .increment(fanned.len() as u64);
        let mut deliveries: HashMap<String, i64> = fanned.into_iter().collect();
        for job in jobs {
            let accepted: Vec<Accepted> = job
                .events
                .iter()
                .map(|e| {
                    let event_id = e.event_id.clone().unwrap_or_default();
                    let n = deliveries.remove(&event_id).unwrap_or(0);
                    Accepted {
                        event_id,
                        deliveries: n,
                    }
                })
                .collect();
            let created: i64 = accepted.iter().map(|a| a.deliveries).sum();
            self.metrics.deliveries_created.increment(created as u64);
            job.answer(Ok(accepted));
        }
    }
}

/// Gives every event its id and answers the jobs that break a field rule
/// (alone, before anything is written); returns the others.
fn refuse_invalid(group: Vec<Job>) -> Vec<Job> {
    let mut jobs = Vec::with_capacity(group.len());
    for mut job in group {
        for event in &mut job.events {
            if event.event_id.is_none() {
                event.event_id = Some(format!("evt_{}", Uuid::new_v4().simple()));
            }
        }
        let broken = job.events.iter().enumerate().find_map(|(index, e)| {
            e.check()
                .err()
                .map(|error| Refused::Invalid { index, error })
        });
        match broken {
            Some(refused) => job.answer(Err(refused)),
            None => jobs.push(job),
        }
    }
    jobs
}

/// Every job gets the same failure (shared: sqlx errors do not clone, and
/// each request must see its class, a "try again" or not).
fn answer_all(jobs: Vec<Job>, e: Interrupted) {
    let e = Arc::new(e);
    for job in jobs {
        job.answer(Err(Refused::Database(Arc::clone(&e))));
    }
}

/// Writes and fans out `events` in one statement: all or nothing, and
/// committed when it returns (autocommit) unless `conn` is in a transaction.
async fn write(
    conn: &mut PgConnection,
    events: &[&NewEvent],
    chunk: i64,
) -> sqlx::Result<Vec<(String, i64)>> {
    let types: Vec<String> = events.iter().map(|e| e.event_type.clone()).collect();
    let ids: Vec<String> = events
        .iter()
        .map(|e| e.event_id.clone().unwrap_or_default())
        .collect();
    let data: Vec<&str> = events.iter().map(|e| e.data.get()).collect();
    let occurred: Vec<_> = events.iter().map(|e| e.occurred_at).collect();
    store::publish(conn, &types, &ids, &data, &occurred, chunk).await
}

/// One job on its own, event by event in one transaction, so a value
/// Postgres refuses is pinned to its index. All or nothing.
async fn write_alone(
    conn: &mut PgConnection,
    events: &[NewEvent],
    chunk: i64,
) -> Result<Vec<(String, i64)>, Refused> {
    let mut tx = conn.begin().await.map_err(Interrupted::Database)?;
    let mut fanned = Vec::with_capacity(events.len());
    for (index, e) in events.iter().enumerate() {
        let one = write(&mut tx, &[e], chunk).await.map_err(|e| {
            if db::is_row_error(&e) {
                Refused::Invalid {
                    index,
                    error: IntakeError::from(e),
                }
            } else {
                Interrupted::Database(e).into()
            }
        })?;
        fanned.extend(one);
    }
    tx.commit().await.map_err(Interrupted::Database)?;
    Ok(fanned)
}
