//! Several relay replicas on one PostgreSQL database.
//!
//! Dedupe is the unique (event_id, environment) key, so a resend to another
//! replica is answered `duplicate`. Claims take rows with `FOR UPDATE SKIP
//! LOCKED` and set a lease, so replicas never wait on each other and never
//! claim the same delivery while an attempt is in flight; a replica killed
//! mid-attempt leaves a lease that expires, and any replica claims it again.
//!
//! Accepts are committed in groups: one task per replica takes the webhooks
//! waiting and inserts them with one statement, so PostgreSQL flushes its WAL
//! once for the group instead of once per webhook.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::{mpsc, oneshot};

use super::rows::{self, ClaimRow, DeliveryRow};
use super::{
    Accepted, Claimed, Delivery, DeliveryId, ListFilter, NewEvent, Outcome, StoreError, Timestamp,
};
use crate::config::DatabaseConfig;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Rows deleted per purge statement.
const PURGE_CHUNK: i64 = 1000;
/// Most webhooks one insert commits together.
const MAX_GROUP: usize = 512;

/// Inserts a group of events in one statement (one commit, one WAL flush).
/// Rows that collide with a stored event are skipped; what is inserted comes back.
const ACCEPT_GROUP: &str = "INSERT INTO deliveries \
     (environment, event_id, event_type, accelerate_token, body, headers, next_attempt_at, received_at) \
     SELECT e, i, t, k, b, h, r, r FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
     $5::bytea[], $6::bytea[], $7::int8[]) AS u(e, i, t, k, b, h, r) \
     ON CONFLICT (event_id, environment) DO NOTHING RETURNING id, event_id, environment";

type AcceptReply = oneshot::Sender<Result<Accepted, StoreError>>;

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    timeout: Duration,
    accepts: mpsc::Sender<(NewEvent, AcceptReply)>,
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
        let (accepts, rx) = mpsc::channel(MAX_GROUP * 8);
        // The task ends when the last clone of the store (and its sender) is gone.
        tokio::spawn(accept_groups(pool.clone(), timeout, rx));
        Ok(Self {
            pool,
            timeout,
            accepts,
        })
    }

    /// `Ok` once the event's group is committed: PostgreSQL has flushed the
    /// commit (`synchronous_commit` on, its default) when the insert returns.
    pub async fn accept(&self, event: NewEvent) -> Result<Accepted, StoreError> {
        let (reply, answer) = oneshot::channel();
        let queued = async {
            self.accepts
                .send((event, reply))
                .await
                .map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        };
        tokio::time::timeout(self.timeout, queued)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
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
        bounded(self.timeout, sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn accept_groups(
    pool: PgPool,
    timeout: Duration,
    mut rx: mpsc::Receiver<(NewEvent, AcceptReply)>,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        match insert_group(&pool, timeout, &group).await {
            Ok(inserted) => answer_group(group, inserted),
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(error = %reason, webhooks = group.len(), "could not commit a group of webhooks; each is answered 503");
                for (_, reply) in group {
                    let _ = reply.send(Err(StoreError::Commit(reason.clone())));
                }
            }
        }
    }
}

async fn insert_group(
    pool: &PgPool,
    timeout: Duration,
    group: &[(NewEvent, AcceptReply)],
) -> Result<Vec<(i64, String, String)>, StoreError> {
    let column =
        |f: fn(&NewEvent) -> &str| -> Vec<&str> { group.iter().map(|(e, _)| f(e)).collect() };
    let insert = sqlx::query_as::<_, (i64, String, String)>(ACCEPT_GROUP)
        .bind(column(|e| e.environment.as_str()))
        .bind(column(|e| e.event_id.as_str()))
        .bind(column(|e| e.event_type.as_str()))
        .bind(column(|e| e.token.as_str()))
        .bind(
            group
                .iter()
                .map(|(e, _)| e.body.as_ref())
                .collect::<Vec<&[u8]>>(),
        )
        .bind(
            group
                .iter()
                .map(|(e, _)| e.headers.encode())
                .collect::<Vec<Vec<u8>>>(),
        )
        .bind(
            group
                .iter()
                .map(|(e, _)| e.received_at.0)
                .collect::<Vec<i64>>(),
        )
        .fetch_all(pool);
    bounded(timeout, insert).await
}

/// Each webhook of a committed group learns whether it was the one inserted.
/// The same event twice in one group is inserted once: the first is `New`,
/// the others `Duplicate`, as if they had come one after the other.
fn answer_group(group: Vec<(NewEvent, AcceptReply)>, inserted: Vec<(i64, String, String)>) {
    let mut ids: HashMap<(String, String), i64> = inserted
        .into_iter()
        .map(|(id, event_id, environment)| ((event_id, environment), id))
        .collect();
    for (event, reply) in group {
        let key = (
            event.event_id.as_str().to_owned(),
            event.environment.as_str().to_owned(),
        );
        let outcome = match ids.remove(&key) {
            Some(id) => Accepted::New(DeliveryId(id)),
            None => Accepted::Duplicate,
        };
        let _ = reply.send(Ok(outcome));
    }
}

/// Caps a database call at the statement timeout, so a connection that hangs
/// (not refused, just silent) also ends in a 503.
async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| StoreError::Timeout(timeout))?
        .map_err(StoreError::from)
}
