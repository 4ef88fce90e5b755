//! Durable state: every accepted event and its delivery. No SQL outside this folder.
//!
//! A delivery is `pending` until Accelerate answers 2xx (`delivered`) or the
//! retry schedule is used up (`dead`). The worker takes due deliveries with a
//! lease (`claim_due`), so an attempt cut short by a crash is simply claimed again
//! once the lease runs out.

mod postgres;
mod rows;
mod sqlite;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::config::DatabaseConfig;
use crate::event::{AccelerateToken, Environment, EventId, EventType};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The store the relay runs on, chosen by `RELAY_DATABASE_URL`.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Opens the database, runs the embedded migrations and starts what the
    /// backend needs in the background (the SQLite writer).
    pub async fn open(config: &DatabaseConfig, role: Role) -> Result<Self, StoreError> {
        let url = config.url.expose();
        if url.starts_with("sqlite:") {
            return Ok(Store::Sqlite(SqliteStore::open(url, role).await?));
        }
        Ok(Store::Postgres(PgStore::open(config, role).await?))
    }

    /// Stores a new event with its pending delivery, or reports that its id was
    /// already accepted for this environment. `Ok` means committed to disk.
    pub async fn accept(&self, event: NewEvent) -> Result<Accepted, StoreError> {
        match self {
            Store::Sqlite(s) => s.accept(event).await,
            Store::Postgres(s) => s.accept(event).await,
        }
    }

    /// Leases up to `limit` due deliveries until `now + lease`, counting the attempt.
    pub async fn claim_due(
        &self,
        now: Timestamp,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        match self {
            Store::Sqlite(s) => s.claim_due(now, lease, limit).await,
            Store::Postgres(s) => s.claim_due(now, lease, limit).await,
        }
    }

    /// Records how an attempt ended. Ignored when the lease was lost and the
    /// delivery claimed again since (the attempt number no longer matches).
    pub async fn finish(&self, claim: &Claimed, outcome: Outcome) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.finish(claim, outcome).await,
            Store::Postgres(s) => s.finish(claim, outcome).await,
        }
    }

    /// The earliest time a pending delivery becomes due, so the worker can sleep until then.
    pub async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        match self {
            Store::Sqlite(s) => s.next_due().await,
            Store::Postgres(s) => s.next_due().await,
        }
    }

    pub async fn get(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get(id).await,
            Store::Postgres(s) => s.get(id).await,
        }
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Delivery>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list(filter).await,
            Store::Postgres(s) => s.list(filter).await,
        }
    }

    /// Makes a delivery (of any status) pending and due now; `false` when it does not exist.
    pub async fn retry(&self, id: DeliveryId, now: Timestamp) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.retry(id, now).await,
            Store::Postgres(s) => s.retry(id, now).await,
        }
    }

    /// Makes every dead delivery pending and due now; returns how many.
    pub async fn retry_dead(&self, now: Timestamp) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.retry_dead(now).await,
            Store::Postgres(s) => s.retry_dead(now).await,
        }
    }

    /// Deletes delivered events received before `before` (they hold card holder
    /// data). Pending and dead deliveries are never deleted by the relay.
    pub async fn purge_delivered(&self, before: Timestamp) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.purge_delivered(before).await,
            Store::Postgres(s) => s.purge_delivered(before).await,
        }
    }

    /// Whether the store answers, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.ping().await,
            Store::Postgres(s) => s.ping().await,
        }
    }

    /// Lets writes in flight commit, then closes the database.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}

/// Who opens the store: the relay itself, or an operator's command beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Service,
    Tool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("could not migrate the database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the store is shutting down")]
    Closed,
    #[error("the store did not commit within {0:?}")]
    Timeout(Duration),
    #[error("the database did not commit: {0}")]
    Commit(String),
    #[error("SQLite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store cannot be used as configured; the text says what to do.
    #[error("{0}")]
    Unusable(String),
    /// The database refused this one row's values (not the store as a
    /// whole): sending it again cannot help.
    #[error("the database refused the event: {0}")]
    Refused(String),
    #[error("corrupt row {0}: {1}")]
    Corrupt(i64, String),
}

/// Milliseconds since the Unix epoch; the clock the store and worker share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
    pub fn minus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
    /// How long from `self` until `later` (zero when `later` has passed).
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(self.0).unwrap_or(0))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        Self(i64::try_from(ms).unwrap_or(i64::MAX))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}

/// A delivery's public id, `dlv_<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeliveryId(pub i64);

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dlv_{}", self.0)
    }
}

impl FromStr for DeliveryId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("dlv_")
            .unwrap_or(s)
            .parse::<i64>()
            .map(DeliveryId)
            .map_err(|_| format!("`{s}` is not a delivery id (dlv_<number>)"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Delivered,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Dead => "dead",
        }
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Status::Pending),
            "delivered" => Ok(Status::Delivered),
            "dead" => Ok(Status::Dead),
            other => Err(format!(
                "`{other}` is not a status; use pending, delivered or dead"
            )),
        }
    }
}

/// The request headers forwarded to Accelerate, exactly as received.
///
/// Stored as `name:value\n` lines of raw bytes: header values cannot hold a
/// newline, and bytes (not strings) keep any value unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardHeaders(Vec<(String, Bytes)>);

impl ForwardHeaders {
    pub fn push(&mut self, name: &str, value: &[u8]) {
        self.0
            .push((name.to_ascii_lowercase(), Bytes::copy_from_slice(value)));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_ref()))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in &self.0 {
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            out.extend_from_slice(value);
            out.push(b'\n');
        }
        out
    }

    pub fn decode(raw: &[u8]) -> Option<Self> {
        let mut headers = Self::default();
        for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let colon = line.iter().position(|b| *b == b':')?;
            let name = std::str::from_utf8(&line[..colon]).ok()?;
            headers.push(name, &line[colon + 1..]);
        }
        Some(headers)
    }
}

/// An event that passed every check, ready to be committed.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub environment: Environment,
    pub event_id: EventId,
    pub event_type: EventType,
    pub token: AccelerateToken,
    pub body: Bytes,
    pub headers: ForwardHeaders,
    pub received_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    New(DeliveryId),
    Duplicate,
}

/// A leased delivery, with what the worker needs to send it.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: DeliveryId,
    pub environment: Environment,
    pub event_id: String,
    pub body: Bytes,
    pub headers: ForwardHeaders,
    /// This attempt's number, 1 for the first (sent as `X-Relay-Attempt`).
    pub attempt: u32,
    /// The attempt's place in the retry schedule; restarts after a manual retry.
    pub schedule_attempt: u32,
    pub received_at: Timestamp,
}

/// How an attempt ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    Delivered { at: Timestamp, status: u16 },
    Retry { at: Timestamp, error: String },
    Dead { error: String },
}

/// A delivery as operators see it (no body, no headers, redacted token).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Delivery {
    pub id: String,
    pub environment: String,
    pub event_id: String,
    pub event_type: String,
    pub accelerate_token: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub received_at: String,
    pub delivered_at: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub accelerate_token: Option<String>,
    pub event_id: Option<String>,
    pub limit: u32,
}
