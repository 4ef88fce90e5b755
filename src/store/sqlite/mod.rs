//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! Every write goes through one writer thread (`writer`) that takes whatever
//! is waiting and commits it in one transaction (group commit): one fsync
//! serves many events, and each caller is answered only after that commit
//! returned. The thread owns its connection, so a batch costs one wake-up,
//! not one cross-thread hop per statement. Reads run on connections of their
//! own (`reads`). This file opens the database and answers the `Backend`.

mod reads;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Statement, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::backend::{Backend, OperatorRow};
use super::replays::{ReplayId, Stepped};
use super::rows::{self, AttemptRow, ClaimRow, HeadersRow, Param, Value};
use super::{
    Accepted, AttemptRecord, AttemptView, Claimed, Delivery, DeliveryId, Gauges, ListFilter,
    NewEvent, Outcome, Role, Schema, StoreError, Timestamp,
};
use crate::event::Environment;
use crate::seal::StoreKeys;
use crate::supervise::supervise_thread;
pub(super) use reads::SqliteRow;
use reads::{cursor_at, delivery_row, ReadPool};
use writer::{Message, Work, Writer};

/// Schema versions, applied in order and recorded in `PRAGMA user_version`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/sqlite/0001_deliveries.sql"),
    include_str!("../../../migrations/sqlite/0002_due_index_first.sql"),
    include_str!("../../../migrations/sqlite/0003_attempts.sql"),
    include_str!("../../../migrations/sqlite/0004_delivered_by_environment.sql"),
    include_str!("../../../migrations/sqlite/0005_authorization_key_refs.sql"),
    include_str!("../../../migrations/sqlite/0006_delivered_attempt_in_row.sql"),
    include_str!("../../../migrations/sqlite/0007_console_sessions.sql"),
    include_str!("../../../migrations/sqlite/0008_find_any_payment.sql"),
    include_str!("../../../migrations/sqlite/0009_replays.sql"),
    include_str!("../../../migrations/sqlite/0010_delivery_control.sql"),
    include_str!("../../../migrations/sqlite/0011_store_format.sql"),
    include_str!("../../../migrations/sqlite/0012_store_key.sql"),
];

/// Requests waiting for the writer; beyond this, callers wait (backpressure).
const QUEUE: usize = 8192;
/// How long an accept may wait for its commit before the relay answers 503
/// (Checkout.com gives up after 10 s and resends anyway).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the checkpointer copies the WAL into the database. Each
/// checkpoint ends in an fsync of the database file that commits queue
/// behind, so many small ones keep the accept tail short: p99 at 1,000
/// events/s was 16–23 ms checkpointing every second, 6.5–11 ms every 20–50 ms
/// (bench/README.md).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(25);

/// Connections of the operators' reads (admin API, console, CLI), beside the
/// relay's own reader: they can queue among themselves, never ahead of the
/// worker's next-due read, the metrics' gauges or `/readyz`'s probe. Half
/// the cores at most, so that a crowd of operators leaves the other half to
/// the webhooks and the writer (bench/README.md).
fn admin_readers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<Message>,
    /// The relay's own reads (next due time, gauges, probes).
    reader: Arc<Mutex<Connection>>,
    /// Operators' reads (listings, details, sessions).
    admin: Arc<ReadPool>,
    /// Stops the checkpointer thread when sent to or when the last clone drops.
    checkpointer: Option<std::sync::mpsc::Sender<()>>,
    /// False while the last batch failed to commit (full disk, I/O error): the
    /// database still reads, but the relay cannot accept anything.
    committing: Arc<AtomicBool>,
    /// False while the writer or checkpointer thread waits to be restarted
    /// after a panic.
    threads_up: Arc<[AtomicBool; 2]>,
    closed: Arc<AtomicBool>,
    /// Set by `scrub_wal`; the checkpointer then truncates the WAL.
    truncate_wal: Arc<AtomicBool>,
    /// `RELAY_STORE_KEY`, when set.
    keys: Option<Arc<StoreKeys>>,
}

const WRITER: usize = 0;
const CHECKPOINTER: usize = 1;

impl SqliteStore {
    /// `Role::Service` owns the file (lock, lease reset, checkpoints); `Role::Tool`
    /// is the CLI working beside a running relay and only reads and updates rows.
    pub async fn open(
        url: &str,
        role: Role,
        keys: Option<Arc<StoreKeys>>,
    ) -> Result<Self, StoreError> {
        let path = path_of(url);
        if role == Role::Tool && !path.exists() {
            // An operator's command pointed at the wrong place must say so,
            // not create an empty store and report that it holds nothing.
            return Err(StoreError::Unusable(format!(
                "there is no relay database at {}; set RELAY_DATABASE_URL to the file the relay runs on",
                path.display()
            )));
        }
        let lock = match role {
            Role::Service => {
                owner_only(&path)?;
                lock_file(&path)?
            }
            Role::Tool => None,
        };
        let (conn, reader, checkpoints) = tokio::task::spawn_blocking({
            let path = path.clone();
            type Opened = (Connection, Connection, Option<Connection>);
            move || -> Result<Opened, StoreError> {
                let mut conn = connect(&path)?;
                if role == Role::Tool && schema_of(&conn)?.found == 0 {
                    return Err(StoreError::Unusable(format!(
                        "{} is not a relay database (it has no relay schema); set RELAY_DATABASE_URL to the file the relay runs on",
                        path.display()
                    )));
                }
                if role == Role::Tool {
                    schema_of(&conn)?.admits(role)?;
                }
                migrate(&mut conn)?;
                if role == Role::Service {
                    // One process owns this file (the lock above), so no attempt is
                    // really in flight: make every delivery cut short by a crash due now.
                    conn.execute(
                        "UPDATE deliveries SET next_attempt_at = ?1, leased_until = NULL \
                         WHERE status = 'pending' AND leased_until IS NOT NULL",
                        [Timestamp::now().0],
                    )?;
                }
                let checkpoints = match role {
                    Role::Service => Some(connect(&path)?),
                    Role::Tool => None,
                };
                Ok((conn, connect(&path)?, checkpoints))
            }
        })
        .await
        .map_err(|e| StoreError::Unusable(format!("opening the database panicked: {e}")))??;

        let reader = Arc::new(Mutex::new(reader));
        let admin = Arc::new(ReadPool::open(&path, admin_readers())?);
        let committing = Arc::new(AtomicBool::new(true));
        let closed = Arc::new(AtomicBool::new(false));
        let threads_up = Arc::new([AtomicBool::new(true), AtomicBool::new(true)]);
        let (writer, mut rx) = mpsc::channel(QUEUE);
        let mut state = Writer {
            path,
            conn: Some(conn),
            committing: Arc::clone(&committing),
            lock,
        };
        let up = Arc::clone(&threads_up);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                supervise_thread("sqlite writer", &up[WRITER], || {
                    writer::write_loop(&mut state, &mut rx)
                })
            })
            .map_err(|e| StoreError::Unusable(format!("cannot start the writer thread: {e}")))?;
        let truncate_wal = Arc::new(AtomicBool::new(false));
        let checkpointer = match checkpoints {
            Some(conn) => {
                let (stop, stopped) = std::sync::mpsc::channel();
                let up = Arc::clone(&threads_up);
                let truncate = Arc::clone(&truncate_wal);
                std::thread::Builder::new()
                    .name("sqlite-checkpoint".into())
                    .spawn(move || {
                        supervise_thread("sqlite checkpointer", &up[CHECKPOINTER], || {
                            checkpoint_loop(&conn, &stopped, &truncate)
                        })
                    })
                    .map_err(|e| {
                        StoreError::Unusable(format!("cannot start the checkpoint thread: {e}"))
                    })?;
                Some(stop)
            }
            None => None,
        };
        Ok(Self {
            writer,
            reader,
            admin,
            checkpointer,
            committing,
            threads_up,
            closed,
            truncate_wal,
            keys,
        })
    }

    /// Has the writer run `work` and waits for its commit.
    async fn call<W: Work>(&self, work: W) -> Result<W::Output, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Message::job(work, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on one of the operators' connections, off the async threads.
    async fn admin_read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.admin.run(f).await
    }

    /// Runs `f` on the read connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Unusable(format!("a read panicked: {e}")))?
    }
}

impl Backend for SqliteStore {
    fn keys(&self) -> Option<&StoreKeys> {
        self.keys.as_deref()
    }

    async fn accept(&self, event: NewEvent) -> Result<Accepted, StoreError> {
        let call = self.call(writer::Accept(event));
        tokio::time::timeout(COMMIT_TIMEOUT, call)
            .await
            .map_err(|_| StoreError::Timeout(COMMIT_TIMEOUT))?
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        lease: Duration,
        environment: Environment,
        limit: u32,
    ) -> Result<Vec<ClaimRow>, StoreError> {
        self.call(writer::Claim {
            now,
            lease,
            environment,
            limit,
        })
        .await
    }

    async fn finish(
        &self,
        claim: &Claimed,
        outcome: Outcome,
        attempt: AttemptRecord,
    ) -> Result<(), StoreError> {
        let row = rows::FinishRow::new(claim.id, claim.attempt, &outcome, &attempt);
        self.call(writer::Finish(row)).await
    }

    async fn attempts(&self, id: DeliveryId) -> Result<Vec<AttemptView>, StoreError> {
        self.admin_read(move |conn| {
            let mut stmt = conn.prepare_cached(rows::ATTEMPTS)?;
            bind(&mut stmt, &[Value::Int(id.0)])?;
            let mut found = stmt.raw_query();
            let mut out = Vec::new();
            while let Some(row) = found.next()? {
                out.push(AttemptView::from(AttemptRow {
                    attempt: row.get(0)?,
                    started_at: row.get(1)?,
                    duration_ms: row.get(2)?,
                    http_status: row.get(3)?,
                    outcome: row.get(4)?,
                    message: row.get(5)?,
                }));
            }
            Ok(out)
        })
        .await
    }

    async fn gauges(&self) -> Result<Vec<Gauges>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(rows::GAUGES)?;
            let found = stmt.query_map([], |row| {
                Ok(Gauges {
                    environment: row.get(0)?,
                    pending: row.get::<_, i64>(1)?.try_into().unwrap_or(0),
                    dead: row.get::<_, i64>(2)?.try_into().unwrap_or(0),
                    oldest_pending: row.get::<_, Option<i64>>(3)?.map(Timestamp),
                })
            })?;
            Ok(found.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn delivered_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.admin_read(|conn| {
            let mut stmt = conn.prepare_cached(rows::DELIVERED_COUNTS)?;
            let found = stmt.query_map([], |row| {
                Ok((row.get(0)?, row.get::<_, i64>(1)?.try_into().unwrap_or(0)))
            })?;
            Ok(found.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn release(&self, claim: &Claimed, now: Timestamp) -> Result<(), StoreError> {
        self.call(writer::Release {
            id: claim.id,
            attempt: claim.attempt,
            now,
        })
        .await
        .map(|_| ())
    }

    async fn retry(&self, id: DeliveryId, now: Timestamp) -> Result<bool, StoreError> {
        self.call(writer::Retry(id, now)).await
    }

    async fn retry_dead(
        &self,
        now: Timestamp,
        environment: Option<Environment>,
    ) -> Result<u64, StoreError> {
        self.call(writer::RetryDead(now, environment)).await
    }

    async fn purge_delivered(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = self.call(writer::Purge(before)).await?;
            total += n;
            if n < writer::PURGE_CHUNK as u64 {
                if total > 0 {
                    self.scrub_wal();
                }
                return Ok(total);
            }
        }
    }

    async fn old_format_page(&self, after: i64, limit: i64) -> Result<Vec<HeadersRow>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(rows::OLD_FORMAT_PAGE)?;
            let found = stmt.query_map([after, limit], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?;
            Ok(found.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn rewrite_headers(
        &self,
        id: i64,
        old: Vec<u8>,
        new: Vec<u8>,
    ) -> Result<bool, StoreError> {
        self.call(writer::Rewrite { id, old, new }).await
    }

    /// The schema version in the file and the newest this release has.
    async fn schema(&self) -> Result<Schema, StoreError> {
        self.read(schema_of).await
    }

    /// Moves rows that hold nothing to convert to the current format.
    async fn mark_format(&self, ids: &[i64]) -> Result<u64, StoreError> {
        let ids = serde_json::to_string(ids).expect("integers serialise");
        self.exec(rows::MARK_FORMAT_SQLITE.as_str(), vec![Param::Text(ids)])
            .await
    }

    /// Asks the checkpointer to empty the WAL at its next round: after a
    /// conversion or a purge, the WAL's older frames still hold what was
    /// rewritten or deleted (`secure_delete` zeroes it in the database's
    /// pages, not in frames already written).
    fn scrub_wal(&self) {
        self.truncate_wal.store(true, Ordering::Release);
    }

    async fn exec(&self, sql: &'static str, params: Vec<Param>) -> Result<u64, StoreError> {
        self.call(writer::Exec(sql, params)).await
    }

    async fn insert_returning(
        &self,
        sql: &'static str,
        params: Vec<Param>,
    ) -> Result<i64, StoreError> {
        self.call(writer::Insert(sql, params)).await
    }

    /// The writer runs it, as it runs an operator's insert.
    async fn returning(&self, sql: &'static str, params: Vec<Param>) -> Result<i64, StoreError> {
        self.insert_returning(sql, params).await
    }

    async fn replay_step(&self, id: ReplayId, now: Timestamp) -> Result<Stepped, StoreError> {
        self.call(writer::ReplayStep(id, now)).await
    }

    /// Rows of two numbers, on the relay's own read connection.
    async fn pairs(&self, sql: &'static str) -> Result<Vec<(i64, i64)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(sql)?;
            let mut found = stmt.raw_query();
            let mut out = Vec::new();
            while let Some(row) = found.next()? {
                out.push((row.get(0)?, row.get(1)?));
            }
            Ok(out)
        })
        .await
    }

    /// Rows of an operators' read (sessions, replays, counts), on their
    /// own connections.
    async fn operator_rows<T: OperatorRow>(
        &self,
        sql: String,
        params: Vec<Param>,
    ) -> Result<Vec<T>, StoreError> {
        self.admin_read(move |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let values: Vec<Value<'_>> = params.iter().map(Param::as_value).collect();
            bind(&mut stmt, &values)?;
            let mut found = stmt.raw_query();
            let mut out = Vec::new();
            while let Some(row) = found.next()? {
                out.push(<T as SqliteRow>::from_row(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.read(|conn| {
            let due: Option<i64> = conn.query_row(rows::NEXT_DUE, [], |row| row.get(0))?;
            Ok(due.map(Timestamp))
        })
        .await
    }

    async fn get(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError> {
        self.admin_read(move |conn| {
            let mut stmt = conn.prepare_cached(&rows::get_sql())?;
            bind(&mut stmt, &[Value::Int(id.0)])?;
            let mut found = stmt.raw_query();
            Ok(match found.next()? {
                Some(row) => Some(Delivery::try_from(delivery_row(row)?)?),
                None => None,
            })
        })
        .await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Delivery>, StoreError> {
        let filter = filter.clone();
        self.admin_read(move |conn| {
            let (sql, values) = rows::list_query(&filter, cursor_at(conn, &filter)?);
            let mut stmt = conn.prepare_cached(&sql)?;
            bind(&mut stmt, &values)?;
            let mut found = stmt.raw_query();
            let mut out = Vec::new();
            while let Some(row) = found.next()? {
                out.push(Delivery::try_from(delivery_row(row)?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn list_plan(
        &self,
        filter: &ListFilter,
        _small_table: bool,
    ) -> Result<Vec<String>, StoreError> {
        let filter = filter.clone();
        self.admin_read(move |conn| {
            let (sql, values) = rows::list_query(&filter, cursor_at(conn, &filter)?);
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            bind(&mut stmt, &values)?;
            let mut found = stmt.raw_query();
            let mut plan = Vec::new();
            while let Some(row) = found.next()? {
                plan.push(row.get::<_, String>(3)?);
            }
            Ok(plan)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Relaxed) || self.writer.is_closed() {
            return Err(StoreError::Closed);
        }
        if self.threads_up.iter().any(|up| !up.load(Ordering::Relaxed)) {
            return Err(StoreError::Unusable(
                "a store thread panicked and is being restarted; see the error in the log"
                    .to_owned(),
            ));
        }
        if !self.committing.load(Ordering::Relaxed) {
            return Err(StoreError::Commit(
                "its last batch failed (disk full or I/O error?); check the disk and the log"
                    .to_owned(),
            ));
        }
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        if let Some(stop) = &self.checkpointer {
            let _ = stop.send(());
        }
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Message::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// `sqlite://relay.db`, `sqlite:///var/lib/relay.db`, `sqlite:relay.db?mode=rwc` → the path.
fn path_of(url: &str) -> PathBuf {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    PathBuf::from(rest.split('?').next().unwrap_or(rest))
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // What is deleted or rewritten (purged events' card holder data, keys
    // converted to references) is zeroed in the file, not left in free
    // pages and cells (bench/README.md has its cost).
    conn.pragma_update(None, "secure_delete", "ON")?;
    // Checkpoints run in the background (below), not on a commit a webhook is
    // waiting for; this is only the backstop.
    conn.pragma_update(None, "wal_autocheckpoint", 20_000)?;
    conn.pragma_update(None, "journal_size_limit", 67_108_864)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The schema version in the file beside the newest this release has.
fn schema_of(conn: &Connection) -> Result<Schema, StoreError> {
    let found: u64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    Ok(Schema {
        found,
        known: MIGRATIONS.len() as u64,
    })
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let schema = schema_of(&tx)?;
    schema.admits(Role::Service)?;
    for sql in &MIGRATIONS[schema.found as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()?;
    Ok(())
}

/// The store holds card holder data and the Authorization values: its files
/// are the relay's user's alone. The database is created 0600 before SQLite
/// opens it (SQLite gives `-wal` and `-shm` the database's mode), and files
/// an older relay left readable by others are narrowed.
fn owner_only(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:") {
        return Ok(());
    }
    let unusable = |e: std::io::Error| {
        StoreError::Unusable(format!(
            "cannot create {}: {e}; RELAY_DATABASE_URL must name a file in a folder the relay can write",
            path.display()
        ))
    };
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(unusable)?;
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        if let Ok(meta) = std::fs::metadata(&file) {
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(unusable)?;
            }
        }
    }
    Ok(())
}

/// Holds an exclusive lock beside the database for as long as the writer runs:
/// two relays on one SQLite file would each release the other's leases.
fn lock_file(path: &Path) -> Result<Option<File>, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:") {
        return Ok(None);
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Unusable(format!(
                "cannot open {}: {e}",
                Path::new(&lock_path).display()
            ))
        })?;
    file.try_lock().map_err(|_| {
        StoreError::Unusable(format!(
            "another relay process is using {}; run one relay per SQLite file, or use PostgreSQL for several",
            path.display()
        ))
    })?;
    Ok(Some(file))
}

fn execute(conn: &Connection, sql: &str, values: &[Value<'_>]) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached(sql)?;
    bind(&mut stmt, values)?;
    Ok(stmt.raw_execute()? as u64)
}

/// The shared SQL names its parameters `$1`, `$2`…; bind by those names, since
/// SQLite numbers parameters in order of first appearance.
fn bind(stmt: &mut Statement<'_>, values: &[Value<'_>]) -> rusqlite::Result<()> {
    for (i, value) in values.iter().enumerate() {
        let at = index(stmt, i + 1)?;
        match value {
            Value::Int(n) => stmt.raw_bind_parameter(at, n)?,
            Value::Text(t) => stmt.raw_bind_parameter(at, t)?,
            Value::Blob(b) => stmt.raw_bind_parameter(at, b)?,
            Value::Null | Value::NullText => stmt.raw_bind_parameter(at, rusqlite::types::Null)?,
        }
    }
    Ok(())
}

fn index(stmt: &Statement<'_>, n: usize) -> rusqlite::Result<usize> {
    // Every bind of every statement looks its names up: no string built for it.
    const NAMES: [&str; 13] = [
        "$0", "$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9", "$10", "$11", "$12",
    ];
    let name = NAMES
        .get(n)
        .ok_or_else(|| rusqlite::Error::InvalidParameterName(format!("${n}")))?;
    stmt.parameter_index(name)?
        .ok_or_else(|| rusqlite::Error::InvalidParameterName((*name).to_owned()))
}

/// Keeps the WAL short without making a committing request wait for it: on
/// a connection and thread of its own, so neither commits nor reads queue
/// behind a checkpoint in the relay (only in the disk).
/// When `truncate` is set, the next round copies the whole WAL into the
/// database and truncates it to nothing (waiting for the writer, up to the
/// busy timeout); a round that cannot leaves it set for the next.
fn checkpoint_loop(conn: &Connection, stop: &std::sync::mpsc::Receiver<()>, truncate: &AtomicBool) {
    use std::sync::mpsc::RecvTimeoutError;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        let scrub = truncate.swap(false, Ordering::AcqRel);
        let sql = if scrub {
            "PRAGMA wal_checkpoint(TRUNCATE)"
        } else {
            "PRAGMA wal_checkpoint(PASSIVE)"
        };
        // The first column is 1 when the checkpoint could not finish (busy).
        let done = conn.query_row(sql, [], |row| row.get::<_, i64>(0));
        if scrub && done.as_ref().map_or(true, |busy| *busy != 0) {
            truncate.store(true, Ordering::Release);
        }
        if let Err(e) = done {
            tracing::debug!(error = %e, "background WAL checkpoint failed; will try again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retention runs in the writer: a purge that scans the table stalls
    /// every webhook for as long as the scan takes (a second with a million
    /// rows). Both statements must read the delivered index instead.
    #[test]
    fn purges_read_the_delivered_index_not_the_table() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut conn = connect(&dir.path().join("relay.db")).expect("open");
        migrate(&mut conn).expect("migrate");
        for sql in [rows::PURGE_ATTEMPTS, rows::PURGE_DELIVERED] {
            let mut plan = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("explain");
            let steps: Vec<String> = plan
                .query_map([1, 1000], |row| row.get(3))
                .expect("plan")
                .collect::<Result<_, _>>()
                .expect("plan rows");
            assert!(
                !steps.iter().any(|s| s.starts_with("SCAN deliveries")),
                "{sql}: {steps:?}"
            );
        }
    }
    /// A claim is per environment (one may be paused while the other
    /// flows): a range of the environment's due index, never a scan past
    /// the paused one's backlog.
    #[test]
    fn claims_read_the_environment_due_index() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut conn = connect(&dir.path().join("relay.db")).expect("open");
        migrate(&mut conn).expect("migrate");
        let mut plan = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", rows::claim_sql(false)))
            .expect("explain");
        let steps: Vec<String> = plan
            .query_map(rusqlite::params![1, 1, 10, "sandbox"], |row| row.get(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        assert!(
            steps
                .iter()
                .any(|s| s.contains("deliveries_due_by_environment")),
            "{steps:?}"
        );
        assert!(
            !steps.iter().any(|s| s.starts_with("SCAN deliveries")),
            "{steps:?}"
        );
    }
}
