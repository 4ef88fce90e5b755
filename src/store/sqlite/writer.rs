//! SQLite's one writer: a thread that takes every write waiting and commits
//! them in one transaction (group commit), answering each caller after the
//! commit. Each kind of write is a type that says what it runs and what it
//! answers (`Work`), and travels with its own reply, so an answer can only
//! be the one its caller asked for.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::{bind, connect, execute};
use crate::event::Environment;
use crate::store::replays::{self, ReplayId, Stepped};
use crate::store::rows::{self, ClaimRow, Param, Value};
use crate::store::{Accepted, DeliveryId, NewEvent, StoreError, Timestamp};

/// Most jobs one transaction commits together.
const MAX_BATCH: usize = 512;
/// Rows deleted per purge step.
pub(super) const PURGE_CHUNK: i64 = 1000;

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What the writer thread receives.
pub(super) enum Message {
    Job(Box<dyn Queued>),
    /// Commit what came before, release the file, then answer.
    Close(oneshot::Sender<()>),
}

impl Message {
    /// `work` with the reply its answer goes to.
    pub(super) fn job<W: Work>(work: W, reply: Reply<W::Output>) -> Self {
        Message::Job(Box::new(Pending {
            work,
            reply,
            output: None,
        }))
    }
}

/// One kind of write: what it runs inside the batch's transaction, and what
/// its caller is answered once that commits.
pub(super) trait Work: Send + 'static {
    type Output: Send + 'static;

    fn apply(&self, conn: &Connection) -> rusqlite::Result<Self::Output>;
}

/// A job in a batch: its output is held until the batch commits.
struct Pending<W: Work> {
    work: W,
    reply: Reply<W::Output>,
    output: Option<W::Output>,
}

/// A batch holds jobs of every kind.
pub(super) trait Queued: Send {
    /// Runs the job in the batch's transaction and keeps what it produced.
    fn apply(&mut self, conn: &Connection) -> rusqlite::Result<()>;

    /// Sends the caller the committed output, or the failure.
    fn answer(self: Box<Self>, committed: Result<(), StoreError>);
}

impl<W: Work> Queued for Pending<W> {
    fn apply(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        self.output = Some(self.work.apply(conn)?);
        Ok(())
    }

    fn answer(self: Box<Self>, committed: Result<(), StoreError>) {
        let Pending { reply, output, .. } = *self;
        let answer = committed.map(|()| {
            // `commit_batch` reports a job committed only after its `apply`
            // returned in the transaction that committed.
            output.expect("a committed job was applied in that transaction")
        });
        // The caller may have timed out and gone; the result stands anyway.
        let _ = reply.send(answer);
    }
}

/// Stores a new event with its pending delivery (nothing if its id is stored).
pub(super) struct Accept(pub NewEvent);

impl Work for Accept {
    type Output = Accepted;

    fn apply(&self, conn: &Connection) -> rusqlite::Result<Accepted> {
        let event = &self.0;
        let mut stmt = conn.prepare_cached(rows::ACCEPT)?;
        let sealed_by = event.sealed_by();
        bind(
            &mut stmt,
            &[
                Value::Text(event.environment.as_str()),
                Value::Text(event.event_id.as_str()),
                Value::Text(event.event_type.as_str()),
                Value::Text(event.token.as_str()),
                Value::Blob(event.stored_body()),
                Value::Blob(&event.stored_headers()),
                Value::Int(event.received_at.0),
                event.leased_until.map(|t| t.0).into(),
                event.payment_id.as_ref().map(|p| p.as_str()).into(),
                Value::Int(event.format()),
                sealed_by.as_deref().into(),
            ],
        )?;
        let mut inserted = stmt.raw_query();
        let id: Option<i64> = match inserted.next()? {
            Some(row) => Some(row.get(0)?),
            None => None,
        };
        Ok(id.map_or(Accepted::Duplicate, |id| Accepted::New(DeliveryId(id))))
    }
}

/// Leases up to `limit` due deliveries of `environment` until `now + lease`.
pub(super) struct Claim {
    pub now: Timestamp,
    pub lease: Duration,
    pub environment: Environment,
    pub limit: u32,
}

impl Work for Claim {
    type Output = Vec<ClaimRow>;

    fn apply(&self, conn: &Connection) -> rusqlite::Result<Vec<ClaimRow>> {
        let mut stmt = conn.prepare_cached(rows::claim_sql(false))?;
        bind(
            &mut stmt,
            &[
                Value::Int(self.now.plus(self.lease).0),
                Value::Int(self.now.0),
                Value::Int(i64::from(self.limit)),
                Value::Text(self.environment.as_str()),
            ],
        )?;
        let mut found = stmt.raw_query();
        let mut claimed = Vec::new();
        while let Some(row) = found.next()? {
            claimed.push(ClaimRow {
                id: row.get(0)?,
                environment: row.get(1)?,
                event_id: row.get(2)?,
                body: row.get(3)?,
                headers: row.get(4)?,
                attempts: row.get(5)?,
                attempts_base: row.get(6)?,
                received_at: row.get(7)?,
                sealed_by: row.get(8)?,
            });
        }
        Ok(claimed)
    }
}

/// How an attempt ended, and the attempt in the history.
pub(super) struct Finish(pub rows::FinishRow);

impl Work for Finish {
    type Output = ();

    fn apply(&self, conn: &Connection) -> rusqlite::Result<()> {
        execute(conn, rows::finish_one_sql(), &self.0.values())?;
        if self.0.needs_attempt_row() {
            execute(conn, rows::RECORD_ATTEMPT, &self.0.attempt_values())?;
        }
        Ok(())
    }
}

/// A claim given back unstarted.
pub(super) struct Release {
    pub id: DeliveryId,
    pub attempt: u32,
    pub now: Timestamp,
}

impl Work for Release {
    type Output = u64;

    fn apply(&self, conn: &Connection) -> rusqlite::Result<u64> {
        execute(
            conn,
            rows::RELEASE,
            &[
                Value::Int(self.id.0),
                Value::Int(i64::from(self.attempt)),
                Value::Int(self.now.0),
            ],
        )
    }
}

/// One delivery made due now; `false` when none was changed.
pub(super) struct Retry(pub DeliveryId, pub Timestamp);

impl Work for Retry {
    type Output = bool;

    fn apply(&self, conn: &Connection) -> rusqlite::Result<bool> {
        let values = [Value::Int(self.0 .0), Value::Int(self.1 .0)];
        execute(conn, rows::RETRY_ONE_KEEP, &values)?;
        Ok(execute(conn, rows::RETRY_ONE, &values)? > 0)
    }
}

/// Every dead delivery (of one environment, or of both) made due now.
pub(super) struct RetryDead(pub Timestamp, pub Option<Environment>);

impl Work for RetryDead {
    type Output = u64;

    fn apply(&self, conn: &Connection) -> rusqlite::Result<u64> {
        let environment: Value<'_> = self.1.map(|e| e.as_str()).into();
        execute(conn, rows::RETRY_DEAD_KEEP, &[environment])?;
        execute(
            conn,
            rows::RETRY_DEAD,
            &[Value::Int(self.0 .0), environment],
        )
    }
}

/// One replay step: the writer's transaction holds the whole database, so
/// no claim starts between the step's look at the deliveries and its update.
pub(super) struct ReplayStep(pub ReplayId, pub Timestamp);

impl Work for ReplayStep {
    type Output = Stepped;

    fn apply(&self, conn: &Connection) -> rusqlite::Result<Stepped> {
        replay_step(conn, self.0, self.1)
    }
}

/// An insert that returns the new row's id.
pub(super) struct Insert(pub &'static str, pub Vec<Param>);

impl Work for Insert {
    type Output = i64;

    fn apply(&self, conn: &Connection) -> rusqlite::Result<i64> {
        let values: Vec<Value<'_>> = self.1.iter().map(Param::as_value).collect();
        let mut stmt = conn.prepare_cached(self.0)?;
        bind(&mut stmt, &values)?;
        let mut inserted = stmt.raw_query();
        match inserted.next()? {
            Some(row) => row.get(0),
            None => Err(rusqlite::Error::QueryReturnedNoRows),
        }
    }
}

/// A chunk of delivered events received before the time, and their attempts.
pub(super) struct Purge(pub Timestamp);

impl Work for Purge {
    type Output = u64;

    fn apply(&self, conn: &Connection) -> rusqlite::Result<u64> {
        let chunk = [Value::Int(self.0 .0), Value::Int(PURGE_CHUNK)];
        execute(conn, rows::PURGE_ATTEMPTS, &chunk)?;
        execute(conn, rows::PURGE_DELIVERED, &chunk)
    }
}

/// One row's headers replaced, if they are still `old`.
pub(super) struct Rewrite {
    pub id: i64,
    pub old: Vec<u8>,
    pub new: Vec<u8>,
}

impl Work for Rewrite {
    type Output = bool;

    fn apply(&self, conn: &Connection) -> rusqlite::Result<bool> {
        let values = [
            Value::Int(self.id),
            Value::Blob(&self.old),
            Value::Blob(&self.new),
        ];
        Ok(execute(conn, &rows::REWRITE_HEADERS, &values)? > 0)
    }
}

/// One statement of the relay's own (controls, sessions, replays), answered
/// with the rows it changed.
pub(super) struct Exec(pub &'static str, pub Vec<Param>);

impl Work for Exec {
    type Output = u64;

    fn apply(&self, conn: &Connection) -> rusqlite::Result<u64> {
        let values: Vec<Value<'_>> = self.1.iter().map(Param::as_value).collect();
        execute(conn, self.0, &values)
    }
}

/// The writer thread's own state.
pub(super) struct Writer {
    pub path: PathBuf,
    /// `None` after a failed batch, until the next batch reconnects.
    pub conn: Option<Connection>,
    pub committing: Arc<AtomicBool>,
    /// Held for as long as the writer runs; released before a close is
    /// answered, so a relay started right after finds the file free.
    pub lock: Option<File>,
}

/// Returns when the store is closed (or every sender is gone).
pub(super) fn write_loop(writer: &mut Writer, rx: &mut mpsc::Receiver<Message>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        let mut close = None;
        let mut jobs = Vec::with_capacity(batch.len());
        for message in batch {
            match message {
                Message::Close(done) => close = Some(done),
                Message::Job(job) => jobs.push(job),
            }
        }
        if !jobs.is_empty() {
            writer.commit_batch(jobs);
        }
        if let Some(done) = close {
            // Requests that race the close are answered "closed" by the dropped receiver.
            rx.close();
            drop(writer.conn.take());
            drop(writer.lock.take());
            let _ = done.send(());
            return;
        }
    }
}

impl Writer {
    /// Runs every job in one transaction and answers them all after the
    /// commit. If the batch fails because of what one row holds (a constraint,
    /// a value too big), each job is run again in a transaction of its
    /// own, so the bad one fails alone; any other failure (full disk, I/O
    /// error) fails the whole batch, and nothing of it is kept.
    fn commit_batch(&mut self, mut jobs: Vec<Box<dyn Queued>>) {
        let results: Vec<Result<(), StoreError>> = match self.run(&mut jobs) {
            Ok(()) => jobs.iter().map(|_| Ok(())).collect(),
            Err(e) if jobs.len() == 1 => vec![Err(refused_or_not(e))],
            Err(e) if row_specific(&e) => {
                tracing::warn!(error = %e, operations = jobs.len(), "a batch was refused; committing each operation on its own");
                jobs.iter_mut()
                    .map(|job| self.run(std::slice::from_mut(job)).map_err(refused_or_not))
                    .collect()
            }
            Err(e) => {
                let reason = e.to_string();
                jobs.iter()
                    .map(|_| Err(StoreError::Commit(reason.clone())))
                    .collect()
            }
        };
        // Ready again as soon as anything commits; not ready while nothing does.
        let committed = results.iter().any(Result::is_ok)
            || !results
                .iter()
                .any(|r| matches!(r, Err(StoreError::Commit(_))));
        self.committing.store(committed, Ordering::Relaxed);
        for (job, result) in jobs.into_iter().zip(results) {
            job.answer(result);
        }
    }

    /// One transaction over `jobs`. After a failure the connection is thrown
    /// away and the next call opens a new one, so no state of the failed
    /// transaction can leak into the next. (With sqlx, we saw commits after a
    /// SQLITE_FULL report success and vanish on `kill -9`; the full-disk test
    /// guards this.)
    fn run(&mut self, jobs: &mut [Box<dyn Queued>]) -> Result<(), StoreError> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => connect(&self.path)?,
        };
        let done = run_batch(&mut conn, jobs).map_err(StoreError::from);
        match &done {
            Ok(()) => self.conn = Some(conn),
            Err(e) => {
                tracing::error!(error = %e, operations = jobs.len(), "store commit failed; the transaction was rolled back and the writer reconnects")
            }
        }
        done
    }
}

fn run_batch(conn: &mut Connection, jobs: &mut [Box<dyn Queued>]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in jobs.iter_mut() {
        job.apply(&tx)?;
    }
    tx.commit()
}

/// Errors caused by one row's values rather than by the database file.
fn row_specific(e: &StoreError) -> bool {
    use rusqlite::ErrorCode::{ConstraintViolation, TooBig, TypeMismatch};
    matches!(e, StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
        if matches!(f.code, ConstraintViolation | TooBig | TypeMismatch))
}

/// A value SQLite cannot take (too big, wrong type, a CHECK or NOT NULL) is
/// refused for good; anything else (a trigger, the file) is the store failing.
fn refused_or_not(e: StoreError) -> StoreError {
    const TRIGGER: std::ffi::c_int = rusqlite::ffi::SQLITE_CONSTRAINT_TRIGGER;
    match &e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if row_specific(&e) && f.extended_code != TRIGGER =>
        {
            StoreError::Refused(e.to_string())
        }
        _ => StoreError::Commit(e.to_string()),
    }
}

/// A replay's step (see `replays`): the writer's transaction holds the
/// whole database, so no claim starts between the look and the update.
fn replay_step(conn: &Connection, id: ReplayId, now: Timestamp) -> rusqlite::Result<Stepped> {
    let mut stmt = conn.prepare_cached(replays::STEP_REPLAY)?;
    bind(&mut stmt, &[Value::Int(id.0), Value::Int(now.0)])?;
    let mut found = stmt.raw_query();
    let Some(row) = found.next()? else {
        return Ok(Stepped::default());
    };
    let replay = replays::StepReplay {
        environment: row.get(0)?,
        received_after: row.get(1)?,
        received_before: row.get(2)?,
        statuses: row.get(3)?,
        cursor_at: row.get(4)?,
        cursor_id: row.get(5)?,
    };
    drop(found);
    let params = replay.params(now);
    let values: Vec<Value<'_>> = params.iter().map(Param::as_value).collect();
    let mut stmt = conn.prepare_cached(replays::STEP_DELIVERIES)?;
    bind(&mut stmt, &values)?;
    let mut rows_found = stmt.raw_query();
    let mut candidates = Vec::new();
    while let Some(row) = rows_found.next()? {
        candidates.push(replays::Candidate {
            id: row.get(0)?,
            received_at: row.get(1)?,
            in_flight: row.get::<_, i64>(2)? != 0,
        });
    }
    drop(rows_found);
    let plan = replays::plan_step(&candidates, replays::STEP_SIZE);
    for delivery in &plan.queue {
        execute(conn, rows::REPLAY_ONE_KEEP, &[Value::Int(*delivery)])?;
        execute(
            conn,
            rows::REPLAY_ONE,
            &[Value::Int(*delivery), Value::Int(now.0)],
        )?;
    }
    let params = replay.done_params(id, &plan, now);
    let values: Vec<Value<'_>> = params.iter().map(Param::as_value).collect();
    execute(conn, replays::STEP_DONE, &values)?;
    Ok(Stepped {
        queued: plan.queue.len() as u64,
        done: plan.done,
    })
}
