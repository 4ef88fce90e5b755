//! SQLite's reads: the operators' pool of connections, and rows read back
//! into the store's types.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::Connection;

use super::{bind, connect};
use crate::store::at_rest::StoredRow;
use crate::store::rows::{self, ControlRow, DeliveryRow, ReplayRow, SessionRow, Value};
use crate::store::{ListFilter, StoreError};

/// A few read connections, each used by one read at a time; a read waits
/// for a free one on its blocking thread. (Waiting on an async semaphore
/// instead kept connections idle: a turn handed to a read whose worker was
/// busy rendering another answer stayed unused until that worker came back.)
pub(super) struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    returned: Condvar,
    /// Bounds the blocking threads a crowd of reads can hold while waiting.
    waiting: tokio::sync::Semaphore,
}

/// Reads that may wait for a connection at once; more wait, without a thread.
const READ_QUEUE: usize = 64;

impl ReadPool {
    pub(super) fn open(path: &Path, size: usize) -> Result<Self, StoreError> {
        let idle = (0..size)
            .map(|_| connect(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            idle: Mutex::new(idle),
            returned: Condvar::new(),
            waiting: tokio::sync::Semaphore::new(READ_QUEUE),
        })
    }

    pub(super) async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _queued = self
            .waiting
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let lent = Lent {
                pool: &pool,
                conn: Some(pool.take()),
            };
            f(lent.conn.as_ref().expect("lent until dropped"))
        })
        .await
        .map_err(|e| StoreError::Unusable(format!("a read panicked: {e}")))?
    }

    fn take(&self) -> Connection {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = idle.pop() {
                return conn;
            }
            idle = self.returned.wait(idle).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A connection out of the pool, given back when dropped, even by a read
/// that panicked (a statement cut short is reset when it drops).
struct Lent<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            self.pool.returned.notify_one();
        }
    }
}

/// The `received_at` of a listing's cursor row, if it has one and it is kept.
pub(super) fn cursor_at(conn: &Connection, filter: &ListFilter) -> Result<Option<i64>, StoreError> {
    let Some(cursor) = filter.before else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(rows::CURSOR_AT)?;
    bind(&mut stmt, &[Value::Int(cursor.0)])?;
    let mut found = stmt.raw_query();
    Ok(match found.next()? {
        Some(row) => Some(row.get(0)?),
        None => None,
    })
}

/// A row type read back from SQLite, column by column in its query's order.
pub(in crate::store) trait SqliteRow: Sized {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

impl SqliteRow for (i64, String) {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok((row.get(0)?, row.get(1)?))
    }
}

impl SqliteRow for StoredRow {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            environment: row.get(1)?,
            event_id: row.get(2)?,
            body: row.get(3)?,
            headers: row.get(4)?,
        })
    }
}

impl SqliteRow for (i64,) {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok((row.get(0)?,))
    }
}

impl SqliteRow for ControlRow {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(ControlRow {
            environment: row.get(0)?,
            paused_at: row.get(1)?,
            paused_by: row.get(2)?,
            failures: row.get(3)?,
            breaker_opened_at: row.get(4)?,
            probe_at: row.get(5)?,
            held_until: row.get(6)?,
        })
    }
}

impl SqliteRow for SessionRow {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(SessionRow {
            id: row.get(0)?,
            secret_hash: row.get(1)?,
            token_hash: row.get(2)?,
            peer: row.get(3)?,
            created_at: row.get(4)?,
            expires_at: row.get(5)?,
            ended_at: row.get(6)?,
            ended_by: row.get(7)?,
        })
    }
}

impl SqliteRow for ReplayRow {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(ReplayRow {
            id: row.get(0)?,
            environment: row.get(1)?,
            received_after: row.get(2)?,
            received_before: row.get(3)?,
            statuses: row.get(4)?,
            state: row.get(5)?,
            matched: row.get(6)?,
            queued: row.get(7)?,
            created_at: row.get(8)?,
            finished_at: row.get(9)?,
            actor: row.get(10)?,
        })
    }
}

pub(super) fn delivery_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: row.get(0)?,
        environment: row.get(1)?,
        event_id: row.get(2)?,
        event_type: row.get(3)?,
        accelerate_token: row.get(4)?,
        status: row.get(5)?,
        attempts: row.get(6)?,
        next_attempt_at: row.get(7)?,
        last_error: row.get(8)?,
        received_at: row.get(9)?,
        delivered_at: row.get(10)?,
        payment_id: row.get(11)?,
    })
}
