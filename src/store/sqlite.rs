//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! Every write goes through one writer task that takes whatever is waiting and
//! commits it in one transaction (group commit): one fsync serves many events,
//! and each caller is answered only after that commit returned.

use std::fs::File;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::rows::{self, ClaimRow, DeliveryRow};
use super::{
    Accepted, Claimed, Delivery, DeliveryId, ListFilter, NewEvent, Outcome, Role, StoreError,
    Timestamp,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Most operations one transaction commits together.
const MAX_BATCH: usize = 512;
/// Requests waiting for the writer; beyond this, callers wait (backpressure).
const QUEUE: usize = 8192;
/// How long an accept may wait for its commit before the relay answers 503
/// (Checkout.com gives up after 10 s and resends anyway).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows deleted per purge step.
const PURGE_CHUNK: i64 = 1000;

#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<Op>,
    readers: SqlitePool,
    /// False while the last batch failed to commit (full disk, I/O error): the
    /// database still reads, but the relay cannot accept anything.
    committing: Arc<AtomicBool>,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Op {
    Accept(NewEvent, Reply<Accepted>),
    Claim {
        now: Timestamp,
        lease: Duration,
        limit: u32,
        reply: Reply<Vec<Claimed>>,
    },
    Finish {
        id: DeliveryId,
        attempt: u32,
        outcome: Outcome,
        reply: Reply<()>,
    },
    Retry(DeliveryId, Timestamp, Reply<bool>),
    RetryDead(Timestamp, Reply<u64>),
    Purge(Timestamp, Reply<u64>),
    Close(oneshot::Sender<()>),
}

impl SqliteStore {
    /// `Role::Service` owns the file (lock, lease reset, checkpoints); `Role::Tool`
    /// is the CLI working beside a running relay and only reads and updates rows.
    pub async fn open(url: &str, role: Role) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            // Checkpoints run in the background (below), not on a commit that a
            // webhook is waiting for; this is only the backstop.
            .pragma("wal_autocheckpoint", "20000")
            .pragma("journal_size_limit", "67108864");
        let lock = match role {
            Role::Service => lock_file(&options)?,
            Role::Tool => None,
        };
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&readers).await?;
        let mut conn = SqliteConnection::connect_with(&options).await?;
        if role == Role::Service {
            // One process owns this file (the lock above), so no attempt is really
            // in flight: make every delivery cut short by a crash due at once.
            sqlx::query(
                "UPDATE deliveries SET next_attempt_at = $1, leased_until = NULL \
                 WHERE status = 'pending' AND leased_until IS NOT NULL",
            )
            .bind(Timestamp::now().0)
            .execute(&mut conn)
            .await?;
            tokio::spawn(checkpoint_loop(readers.clone()));
        }
        let (writer, rx) = mpsc::channel(QUEUE);
        let committing = Arc::new(AtomicBool::new(true));
        tokio::spawn(write_loop(
            Writer {
                options,
                conn: Some(conn),
                committing: Arc::clone(&committing),
                _lock: lock,
            },
            rx,
        ));
        Ok(Self {
            writer,
            readers,
            committing,
        })
    }

    pub async fn accept(&self, event: NewEvent) -> Result<Accepted, StoreError> {
        let call = self.call(|reply| Op::Accept(event, reply));
        tokio::time::timeout(COMMIT_TIMEOUT, call)
            .await
            .map_err(|_| StoreError::Timeout(COMMIT_TIMEOUT))?
    }

    pub async fn claim_due(
        &self,
        now: Timestamp,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.call(|reply| Op::Claim {
            now,
            lease,
            limit,
            reply,
        })
        .await
    }

    pub async fn finish(&self, claim: &Claimed, outcome: Outcome) -> Result<(), StoreError> {
        self.call(|reply| Op::Finish {
            id: claim.id,
            attempt: claim.attempt,
            outcome,
            reply,
        })
        .await
    }

    pub async fn retry(&self, id: DeliveryId, now: Timestamp) -> Result<bool, StoreError> {
        self.call(|reply| Op::Retry(id, now, reply)).await
    }

    pub async fn retry_dead(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.call(|reply| Op::RetryDead(now, reply)).await
    }

    pub async fn purge_delivered(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = self.call(|reply| Op::Purge(before, reply)).await?;
            total += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    pub async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let due: Option<i64> = sqlx::query_scalar(rows::NEXT_DUE)
            .fetch_one(&self.readers)
            .await?;
        Ok(due.map(Timestamp))
    }

    pub async fn get(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError> {
        let row: Option<DeliveryRow> = sqlx::query_as(&rows::get_sql())
            .bind(id.0)
            .fetch_optional(&self.readers)
            .await?;
        Ok(row.map(Delivery::from))
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Delivery>, StoreError> {
        let (status, token, event_id, limit) = rows::list_binds(filter);
        let found: Vec<DeliveryRow> = sqlx::query_as(&rows::list_sql())
            .bind(status)
            .bind(token)
            .bind(event_id)
            .bind(limit)
            .fetch_all(&self.readers)
            .await?;
        Ok(found.into_iter().map(Delivery::from).collect())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.is_closed() {
            return Err(StoreError::Closed);
        }
        if !self.committing.load(Ordering::Relaxed) {
            return Err(StoreError::Commit(
                "the last write did not commit (disk full or I/O error?)".to_owned(),
            ));
        }
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Op::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.readers.close().await;
    }

    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(op(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// Holds an exclusive lock beside the database for as long as the writer runs:
/// two relays on one SQLite file would each release the other's leases.
fn lock_file(options: &SqliteConnectOptions) -> Result<Option<Arc<File>>, StoreError> {
    let path = options.get_filename();
    if path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:") {
        return Ok(None);
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Commit(format!("cannot open {}: {e}", lock_path.display())))?;
    file.try_lock().map_err(|_| {
        StoreError::Commit(format!(
            "another relay process is using {}; run one relay per SQLite file, or use PostgreSQL for several",
            path.display()
        ))
    })?;
    Ok(Some(Arc::new(file)))
}

/// The writer task's own state.
struct Writer {
    options: SqliteConnectOptions,
    /// `None` after a failed batch, until the next batch reconnects.
    conn: Option<SqliteConnection>,
    committing: Arc<AtomicBool>,
    /// Held for as long as the writer runs.
    _lock: Option<Arc<File>>,
}

async fn write_loop(mut writer: Writer, mut rx: mpsc::Receiver<Op>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut close = None;
        let mut ops = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                Op::Close(done) => close = Some(done),
                other => ops.push(other),
            }
        }
        if !ops.is_empty() {
            writer.commit_batch(ops).await;
        }
        if let Some(done) = close {
            // Requests that race the close are answered "closed" by the dropped receiver.
            rx.close();
            if let Some(conn) = writer.conn.take() {
                let _ = conn.close().await;
            }
            let _ = done.send(());
            return;
        }
    }
}

impl Writer {
    /// Runs every operation in one transaction and answers them all after the
    /// commit. If anything fails, nothing of the batch is kept and every caller
    /// gets the error.
    ///
    /// After a failure the connection is thrown away and the next batch opens a
    /// new one. Seen in the full-disk test: after one SQLITE_FULL, later commits
    /// on the same connection reported success, yet were gone after `kill -9`
    /// (SQLite rolls such a transaction back by itself, and sqlx's own count of
    /// open transactions no longer matches it). A fresh connection has no such state.
    async fn commit_batch(&mut self, ops: Vec<Op>) {
        let result = match &mut self.conn {
            Some(conn) => run_batch(conn, &ops).await,
            None => match SqliteConnection::connect_with(&self.options).await {
                Ok(fresh) => run_batch(self.conn.insert(fresh), &ops).await,
                Err(e) => Err(e),
            },
        };
        let failure = result.as_ref().err().map(ToString::to_string);
        self.committing.store(failure.is_none(), Ordering::Relaxed);
        if let Some(reason) = &failure {
            tracing::error!(error = %reason, operations = ops.len(), "store commit failed; the batch was rolled back and the writer reconnects");
            self.conn = None;
        }
        answer_all(ops, result, failure.as_deref());
    }
}

fn answer_all(ops: Vec<Op>, result: Result<Vec<Done>, sqlx::Error>, failure: Option<&str>) {
    let mut done = result.unwrap_or_default().into_iter();
    for op in ops {
        op.answer(match failure {
            None => Ok(done.next()),
            Some(reason) => Err(reason),
        });
    }
}

/// What one operation produced inside the transaction, sent once it commits.
enum Done {
    Accepted(Accepted),
    Claimed(Vec<ClaimRow>),
    Finished,
    Count(u64),
}

async fn run_batch(conn: &mut SqliteConnection, ops: &[Op]) -> Result<Vec<Done>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let mut done = Vec::with_capacity(ops.len());
    for op in ops {
        done.push(apply(&mut tx, op).await?);
    }
    tx.commit().await?;
    Ok(done)
}

async fn apply(tx: &mut SqliteConnection, op: &Op) -> Result<Done, sqlx::Error> {
    Ok(match op {
        Op::Accept(event, _) => {
            let id: Option<i64> = sqlx::query_scalar(rows::ACCEPT)
                .bind(event.environment.as_str())
                .bind(event.event_id.as_str())
                .bind(event.event_type.as_str())
                .bind(event.token.as_str())
                .bind(event.body.as_ref())
                .bind(event.headers.encode())
                .bind(event.received_at.0)
                .fetch_optional(&mut *tx)
                .await?;
            Done::Accepted(id.map_or(Accepted::Duplicate, |id| Accepted::New(DeliveryId(id))))
        }
        Op::Claim {
            now, lease, limit, ..
        } => Done::Claimed(
            sqlx::query_as(&rows::claim_sql(false))
                .bind(now.plus(*lease).0)
                .bind(now.0)
                .bind(i64::from(*limit))
                .fetch_all(&mut *tx)
                .await?,
        ),
        Op::Finish {
            id,
            attempt,
            outcome,
            ..
        } => {
            rows::finish_query(*id, *attempt, outcome)
                .execute(&mut *tx)
                .await?;
            Done::Finished
        }
        Op::Retry(id, now, _) => Done::Count(
            sqlx::query(rows::RETRY_ONE)
                .bind(id.0)
                .bind(now.0)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
        ),
        Op::RetryDead(now, _) => Done::Count(
            sqlx::query(rows::RETRY_DEAD)
                .bind(now.0)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
        ),
        Op::Purge(before, _) => Done::Count(
            sqlx::query(rows::PURGE_DELIVERED)
                .bind(before.0)
                .bind(PURGE_CHUNK)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
        ),
        Op::Close(_) => Done::Finished,
    })
}

impl Op {
    /// Sends the committed result, or the commit's failure, to whoever asked.
    fn answer(self, result: Result<Option<Done>, &str>) {
        fn send<T>(reply: Reply<T>, value: Result<T, StoreError>) {
            // The caller may have timed out and gone; the result stands anyway.
            let _ = reply.send(value);
        }
        let failed = |reason: &str| StoreError::Commit(reason.to_owned());
        let mismatch = || StoreError::Commit("internal: operation and result differ".to_owned());
        match (self, result) {
            (Op::Accept(_, r), Ok(Some(Done::Accepted(a)))) => send(r, Ok(a)),
            (Op::Claim { reply, .. }, Ok(Some(Done::Claimed(found)))) => {
                send(reply, found.into_iter().map(Claimed::try_from).collect())
            }
            (Op::Finish { reply, .. }, Ok(Some(Done::Finished))) => send(reply, Ok(())),
            (Op::Retry(_, _, r), Ok(Some(Done::Count(n)))) => send(r, Ok(n > 0)),
            (Op::RetryDead(_, r) | Op::Purge(_, r), Ok(Some(Done::Count(n)))) => send(r, Ok(n)),
            (Op::Close(done), _) => {
                let _ = done.send(());
            }
            (op, result) => {
                let error = match result {
                    Err(reason) => failed(reason),
                    Ok(_) => mismatch(),
                };
                match op {
                    Op::Accept(_, r) => send(r, Err(error)),
                    Op::Claim { reply, .. } => send(reply, Err(error)),
                    Op::Finish { reply, .. } => send(reply, Err(error)),
                    Op::Retry(_, _, r) => send(r, Err(error)),
                    Op::RetryDead(_, r) | Op::Purge(_, r) => send(r, Err(error)),
                    Op::Close(done) => {
                        let _ = done.send(());
                    }
                }
            }
        }
    }
}

/// Keeps the WAL short without making a committing request wait for it.
async fn checkpoint_loop(readers: SqlitePool) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if readers.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&readers)
            .await
        {
            tracing::debug!(error = %e, "background WAL checkpoint failed; will try again");
        }
    }
}
