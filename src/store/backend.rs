//! What a database must do for the store: the one list both backends
//! implement, and the one place a call is sent to the backend the relay
//! opened. Everything the store does beyond these (sealing, the operators'
//! views, conversions, replays, sessions) is written once, in `Store`, over
//! this trait.

use std::future::Future;
use std::time::Duration;

use super::replays::{ReplayId, Stepped};
use super::rows::{ClaimRow, HeadersRow, Param};
use super::sqlite::SqliteRow;
use super::{
    Accepted, AttemptRecord, AttemptView, Claimed, Delivery, DeliveryId, Gauges, ListFilter,
    NewEvent, Outcome, PgStore, Schema, SqliteStore, StoreError, Timestamp,
};
use crate::event::Environment;
use crate::seal::StoreKeys;

/// A row an operators' read returns, decoded by either backend.
pub(super) trait OperatorRow:
    SqliteRow + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + 'static
{
}

impl<T> OperatorRow for T where
    T: SqliteRow + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + 'static
{
}

/// The backend the relay opened (`RELAY_DATABASE_URL` chose it).
#[derive(Clone)]
pub(super) enum Engine {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Declares `Backend` from one list of signatures and implements it for
/// `Engine` by sending each call to the backend it holds: the only `match`
/// on the backend in the store (what `enum_dispatch` writes, for async
/// methods, which it cannot).
macro_rules! backend {
    ($(
        $(#[$doc:meta])*
        async fn $name:ident $(<$g:ident: $bound:path>)? (&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
    )*) => {
        /// The operations each database implements in its own way.
        pub(super) trait Backend {
            /// `RELAY_STORE_KEY`, when set.
            fn keys(&self) -> Option<&StoreKeys>;

            /// Asks for what was rewritten or deleted to leave the
            /// database's log too (SQLite's WAL); PostgreSQL's WAL is its own.
            fn scrub_wal(&self) {}

            $(
                $(#[$doc])*
                fn $name $(<$g: $bound>)? (&self $(, $arg: $ty)*)
                    -> impl Future<Output = $ret> + Send;
            )*
        }

        impl Backend for Engine {
            fn keys(&self) -> Option<&StoreKeys> {
                match self {
                    Engine::Sqlite(b) => b.keys(),
                    Engine::Postgres(b) => b.keys(),
                }
            }

            fn scrub_wal(&self) {
                match self {
                    Engine::Sqlite(b) => b.scrub_wal(),
                    Engine::Postgres(b) => b.scrub_wal(),
                }
            }

            $(
                async fn $name $(<$g: $bound>)? (&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Engine::Sqlite(b) => b.$name $(::<$g>)? ($($arg),*).await,
                        Engine::Postgres(b) => b.$name $(::<$g>)? ($($arg),*).await,
                    }
                }
            )*
        }
    };
}

backend! {
    /// Stores a new event with its pending delivery; `Ok` means committed.
    async fn accept(&self, event: NewEvent) -> Result<Accepted, StoreError>;

    /// Leases up to `limit` due deliveries of `environment`, oldest due first.
    async fn claim_due(
        &self,
        now: Timestamp,
        lease: Duration,
        environment: Environment,
        limit: u32,
    ) -> Result<Vec<ClaimRow>, StoreError>;

    /// Records how an attempt ended, and the attempt, in one transaction.
    async fn finish(
        &self,
        claim: &Claimed,
        outcome: Outcome,
        attempt: AttemptRecord,
    ) -> Result<(), StoreError>;

    /// Gives back a claim whose attempt was never started.
    async fn release(&self, claim: &Claimed, now: Timestamp) -> Result<(), StoreError>;

    /// The earliest time a pending delivery becomes due.
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError>;

    async fn get(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError>;

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Delivery>, StoreError>;

    /// `small_table`: PostgreSQL plans as if the table were large; SQLite's
    /// planner does not look at the table's size.
    async fn list_plan(&self, filter: &ListFilter, small_table: bool)
        -> Result<Vec<String>, StoreError>;

    /// A delivery's attempts, oldest first.
    async fn attempts(&self, id: DeliveryId) -> Result<Vec<AttemptView>, StoreError>;

    /// Pending and dead counts and the oldest pending event per environment.
    async fn gauges(&self) -> Result<Vec<Gauges>, StoreError>;

    /// Delivered events still kept, per environment.
    async fn delivered_counts(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// Makes a delivery pending and due now; `false` when none was changed.
    async fn retry(&self, id: DeliveryId, now: Timestamp) -> Result<bool, StoreError>;

    async fn retry_dead(
        &self,
        now: Timestamp,
        environment: Option<Environment>,
    ) -> Result<u64, StoreError>;

    async fn purge_delivered(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// A page of rows of an older format, after the id `after`.
    async fn old_format_page(&self, after: i64, limit: i64)
        -> Result<Vec<HeadersRow>, StoreError>;

    /// Rewrites a row's forward headers if they are still `old`.
    async fn rewrite_headers(&self, id: i64, old: Vec<u8>, new: Vec<u8>)
        -> Result<bool, StoreError>;

    /// Moves rows that hold nothing to convert to the current format.
    async fn mark_format(&self, ids: &[i64]) -> Result<u64, StoreError>;

    /// The schema in the database beside the one this release knows.
    async fn schema(&self) -> Result<Schema, StoreError>;

    /// A statement of the relay's own (controls, sessions, replays); rows changed.
    async fn exec(&self, sql: &'static str, params: Vec<Param>) -> Result<u64, StoreError>;

    /// The id an operator's insert returns.
    async fn insert_returning(&self, sql: &'static str, params: Vec<Param>)
        -> Result<i64, StoreError>;

    /// One number a statement on the delivery path returns.
    async fn returning(&self, sql: &'static str, params: Vec<Param>) -> Result<i64, StoreError>;

    /// Rows of two numbers, on the relay's own connections.
    async fn pairs(&self, sql: &'static str) -> Result<Vec<(i64, i64)>, StoreError>;

    /// One step of a replay, if it is running and due.
    async fn replay_step(&self, id: ReplayId, now: Timestamp) -> Result<Stepped, StoreError>;

    /// Rows of an operators' read, on their own connections.
    async fn operator_rows<T: OperatorRow>(&self, sql: String, params: Vec<Param>)
        -> Result<Vec<T>, StoreError>;

    /// Whether the store answers, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Lets writes in flight commit, then closes the database.
    async fn close(&self) -> ();
}
