//! Several relay replicas on one PostgreSQL database.
//!
//! Dedupe is the unique (event_id, environment) key, so a resend to another
//! replica is answered `duplicate`. Claims take rows with `FOR UPDATE SKIP
//! LOCKED` and set a lease, so replicas never wait on each other and never
//! claim the same delivery while an attempt is in flight; a replica killed
//! mid-attempt leaves a lease that expires, and any replica claims it again.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::rows::{self, ClaimRow, DeliveryRow};
use super::{
    Accepted, Claimed, Delivery, DeliveryId, ListFilter, NewEvent, Outcome, StoreError, Timestamp,
};
use crate::config::DatabaseConfig;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Rows deleted per purge statement.
const PURGE_CHUNK: i64 = 1000;

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    timeout: Duration,
}

impl PgStore {
    /// Connects and migrates; the migrator holds an advisory lock, so replicas
    /// starting together apply each migration once.
    pub async fn open(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let timeout = config.statement_timeout;
        let options = PgConnectOptions::from_str(config.url.expose())?
            .application_name("accelerate-relay")
            .options([("statement_timeout", timeout.as_millis().to_string())]);
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size)
            // A lost database must turn into a quick 503, not a request that hangs.
            .acquire_timeout(timeout)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool, timeout })
    }

    /// One statement in its own transaction: when it returns, PostgreSQL has
    /// flushed the commit (`synchronous_commit` on, its default), and concurrent
    /// commits share WAL flushes.
    pub async fn accept(&self, event: NewEvent) -> Result<Accepted, StoreError> {
        let insert = sqlx::query_scalar::<_, i64>(rows::ACCEPT)
            .bind(event.environment.as_str())
            .bind(event.event_id.as_str())
            .bind(event.event_type.as_str())
            .bind(event.token.as_str())
            .bind(event.body.as_ref())
            .bind(event.headers.encode())
            .bind(event.received_at.0)
            .fetch_optional(&self.pool);
        let id = self.bounded(insert).await?;
        Ok(id.map_or(Accepted::Duplicate, |id| Accepted::New(DeliveryId(id))))
    }

    pub async fn claim_due(
        &self,
        now: Timestamp,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        let found: Vec<ClaimRow> = sqlx::query_as(&rows::claim_sql(true))
            .bind(now.plus(lease).0)
            .bind(now.0)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        found.into_iter().map(Claimed::try_from).collect()
    }

    pub async fn finish(&self, claim: &Claimed, outcome: Outcome) -> Result<(), StoreError> {
        let (sql, values) = rows::finish_statement(claim.id, claim.attempt, &outcome);
        let mut query = sqlx::query(sql);
        for value in values {
            query = match value {
                rows::Value::Int(n) => query.bind(n),
                rows::Value::Text(t) => query.bind(t),
                rows::Value::Blob(b) => query.bind(b),
                rows::Value::Null => query.bind(None::<&str>),
            };
        }
        query.execute(&self.pool).await?;
        Ok(())
    }

    pub async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let due: Option<i64> = sqlx::query_scalar(rows::NEXT_DUE)
            .fetch_one(&self.pool)
            .await?;
        Ok(due.map(Timestamp))
    }

    pub async fn get(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError> {
        let row: Option<DeliveryRow> = sqlx::query_as(&rows::get_sql())
            .bind(id.0)
            .fetch_optional(&self.pool)
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
            .fetch_all(&self.pool)
            .await?;
        Ok(found.into_iter().map(Delivery::from).collect())
    }

    pub async fn retry(&self, id: DeliveryId, now: Timestamp) -> Result<bool, StoreError> {
        let done = sqlx::query(rows::RETRY_ONE)
            .bind(id.0)
            .bind(now.0)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn retry_dead(&self, now: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query(rows::RETRY_DEAD)
            .bind(now.0)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn purge_delivered(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = sqlx::query(rows::PURGE_DELIVERED)
                .bind(before.0)
                .bind(PURGE_CHUNK)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Caps a database call at the statement timeout, so a connection that
    /// hangs (not refused, just silent) also ends in a 503.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(StoreError::from)
    }
}
