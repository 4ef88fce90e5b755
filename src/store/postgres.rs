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
//! once for the group instead of once per webhook. Delivery outcomes are
//! committed in groups the same way.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::backend::{Backend, OperatorRow};
use super::replays::{self, ReplayId, Stepped};
use super::rows::{self, AttemptRow, ClaimRow, DeliveryRow, HeadersRow, Param, Value};
use super::{
    Accepted, AttemptRecord, AttemptView, Claimed, Delivery, DeliveryId, Gauges, ListFilter,
    NewEvent, Outcome, Role, Schema, StoreError, Timestamp,
};
use crate::config::DatabaseConfig;
use crate::event::Environment;
use crate::seal::StoreKeys;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Rows deleted per purge statement.
const PURGE_CHUNK: i64 = 1000;
/// Most items one statement commits together.
const MAX_GROUP: usize = 512;
/// Groups of one kind committing at once (each on its own pooled connection).
const GROUPS_IN_FLIGHT: usize = 4;

/// Inserts a group of events in one statement (one commit, one WAL flush).
/// Rows that collide with a stored event are skipped; what is inserted comes back.
/// `l` is the lease end of an event inserted already claimed (see `NewEvent`).
const ACCEPT_GROUP: &str = "INSERT INTO deliveries \
     (environment, event_id, event_type, accelerate_token, body, headers, received_at, \
     leased_until, next_attempt_at, attempts, payment_id, format, sealed_by) \
     SELECT e, i, t, k, b, h, r, l, COALESCE(l, r), CASE WHEN l IS NULL THEN 0 ELSE 1 END, p, f, s \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
     $5::bytea[], $6::bytea[], $7::int8[], $8::int8[], $9::text[], $10::int8[], $11::text[]) \
     AS u(e, i, t, k, b, h, r, l, p, f, s) \
     ON CONFLICT (event_id, environment) DO NOTHING RETURNING id, event_id, environment";

/// Records a group of outcomes and their attempts in one statement (one
/// commit); each outcome keeps its own fences (attempt number, lease), as
/// `rows::finish_one_sql` has them, while every attempt made is recorded.
static FINISH_GROUP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH u AS (SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::int8[], \
         $5::int8[], $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::text[]) \
         AS u(id, attempt, status, at, http_status, error, started_at, duration_ms, \
         attempt_status, kind, message)), \
         outcome AS (UPDATE deliveries SET {} FROM u \
         WHERE deliveries.id = u.id AND deliveries.attempts = u.attempt \
         AND deliveries.status = 'pending' AND deliveries.leased_until IS NOT NULL) \
         INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, http_status, outcome, message) \
         SELECT u.id, u.attempt, u.started_at, u.duration_ms, u.attempt_status, u.kind, u.message \
         FROM u WHERE u.kind <> 'delivered' AND EXISTS (SELECT 1 FROM deliveries d WHERE d.id = u.id) \
         ON CONFLICT DO NOTHING",
        rows::finish_set(
            "u.status",
            "u.at",
            "u.http_status",
            "u.error",
            ["u.attempt", "u.started_at", "u.duration_ms"]
        )
    )
});

/// Binds one `Value` to a `query` or `query_as` (they are different types).
macro_rules! bind {
    ($query:expr, $value:expr) => {
        match $value {
            Value::Int(n) => $query.bind(n),
            Value::Text(t) => $query.bind(t),
            Value::Blob(b) => $query.bind(b),
            Value::Null => $query.bind(None::<i64>),
            Value::NullText => $query.bind(None::<&str>),
        }
    };
}

/// Connections of the operators' reads (admin API, console, CLI), beside
/// the pool of the webhook and delivery path: they can queue among
/// themselves, never take the webhook path's connections.
pub const ADMIN_CONNECTIONS: u32 = 4;

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// `ADMIN_CONNECTIONS` more, for operators' reads only.
    admin: PgPool,
    timeout: Duration,
    accepts: Group<NewEvent, Accepted>,
    outcomes: Group<rows::FinishRow, ()>,
    /// `RELAY_STORE_KEY`, when set.
    keys: Option<Arc<StoreKeys>>,
}

/// The newest migration applied to the database beside the newest this
/// release embeds.
async fn schema_of(pool: &PgPool) -> Result<Schema, StoreError> {
    Ok(Schema {
        found: applied_version(pool).await?,
        known: known_version(),
    })
}

/// The newest migration this release embeds.
fn known_version() -> u64 {
    MIGRATOR
        .iter()
        .map(|m| u64::try_from(m.version).unwrap_or(0))
        .max()
        .unwrap_or(0)
}

/// The newest migration recorded in the database (0 before the first).
async fn applied_version(pool: &PgPool) -> Result<u64, StoreError> {
    let recorded: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !recorded {
        return Ok(0);
    }
    let newest: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    Ok(newest.map_or(0, |v| u64::try_from(v).unwrap_or(0)))
}

impl PgStore {
    /// Connects and migrates; the migrator holds an advisory lock, so replicas
    /// starting together apply each migration once.
    pub async fn open(config: &DatabaseConfig, role: Role) -> Result<Self, StoreError> {
        let timeout = config.statement_timeout;
        let options = PgConnectOptions::from_str(config.url.expose())?
            .application_name("accelerate-relay")
            .options([("statement_timeout", timeout.as_millis().to_string())]);
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size)
            // A lost database must turn into a quick 503, not a request that hangs.
            .acquire_timeout(timeout)
            .connect_with(options.clone())
            .await?;
        // Opened on first use: a replica nobody operates holds none of them.
        let admin = PgPoolOptions::new()
            .max_connections(ADMIN_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(timeout)
            .connect_lazy_with(options);
        if role == Role::Tool {
            let schema: bool = sqlx::query_scalar("SELECT to_regclass('deliveries') IS NOT NULL")
                .fetch_one(&pool)
                .await?;
            if !schema {
                return Err(StoreError::Unusable(
                    "the database has no relay schema; set RELAY_DATABASE_URL to the database the relay runs on".to_owned(),
                ));
            }
        }
        schema_of(&pool).await?.admits(role)?;
        MIGRATOR.run(&pool).await?;
        let accepts = Group::start("webhooks", {
            let pool = pool.clone();
            move |events: Vec<NewEvent>| insert_group(pool.clone(), timeout, events)
        });
        let outcomes = Group::start("delivery outcomes", {
            let pool = pool.clone();
            move |rows: Vec<rows::FinishRow>| finish_group(pool.clone(), timeout, rows)
        });
        Ok(Self {
            pool,
            admin,
            timeout,
            accepts,
            outcomes,
            keys: config.store_key.clone(),
        })
    }

    /// The one number `sql` returns, on `pool`.
    async fn one_number(
        &self,
        pool: &PgPool,
        sql: &str,
        params: &[Param],
    ) -> Result<i64, StoreError> {
        let mut query = sqlx::query_scalar::<_, i64>(sql);
        for param in params {
            query = bind!(query, param.as_value());
        }
        bounded(self.timeout, query.fetch_one(pool)).await
    }

    /// The `received_at` of a listing's cursor row, if it has one and it is kept.
    async fn cursor_at(&self, filter: &ListFilter) -> Result<Option<i64>, StoreError> {
        let Some(cursor) = filter.before else {
            return Ok(None);
        };
        let query = sqlx::query_scalar(rows::CURSOR_AT)
            .bind(cursor.0)
            .fetch_optional(&self.admin);
        bounded(self.timeout, query).await
    }
}

impl Backend for PgStore {
    fn keys(&self) -> Option<&StoreKeys> {
        self.keys.as_deref()
    }

    /// `Ok` once the event's group is committed: PostgreSQL has flushed the
    /// commit (`synchronous_commit` on, its default) when the insert returns.
    async fn accept(&self, event: NewEvent) -> Result<Accepted, StoreError> {
        self.accepts.submit(event, self.timeout).await
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        lease: Duration,
        environment: Environment,
        limit: u32,
    ) -> Result<Vec<ClaimRow>, StoreError> {
        sqlx::query_as(rows::claim_sql(true))
            .bind(now.plus(lease).0)
            .bind(now.0)
            .bind(i64::from(limit))
            .bind(environment.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::from)
    }

    /// Outcomes are committed in groups too: without, each was a WAL flush of
    /// its own, about one per event delivered.
    async fn finish(
        &self,
        claim: &Claimed,
        outcome: Outcome,
        attempt: AttemptRecord,
    ) -> Result<(), StoreError> {
        let row = rows::FinishRow::new(claim.id, claim.attempt, &outcome, &attempt);
        self.outcomes.submit(row, self.timeout).await
    }

    async fn attempts(&self, id: DeliveryId) -> Result<Vec<AttemptView>, StoreError> {
        let found: Vec<AttemptRow> = sqlx::query_as(rows::ATTEMPTS)
            .bind(id.0)
            .fetch_all(&self.admin)
            .await?;
        Ok(found.into_iter().map(AttemptView::from).collect())
    }

    /// Bounded by the statement timeout, so a slow database cannot hang a scrape.
    async fn gauges(&self) -> Result<Vec<Gauges>, StoreError> {
        let query = sqlx::query_as::<_, (String, i64, i64, Option<i64>)>(rows::GAUGES)
            .fetch_all(&self.pool);
        Ok(bounded(self.timeout, query)
            .await?
            .into_iter()
            .map(|(environment, pending, dead, oldest)| Gauges {
                environment,
                pending: pending.try_into().unwrap_or(0),
                dead: dead.try_into().unwrap_or(0),
                oldest_pending: oldest.map(Timestamp),
            })
            .collect())
    }

    async fn delivered_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let query =
            sqlx::query_as::<_, (String, i64)>(rows::DELIVERED_COUNTS).fetch_all(&self.admin);
        Ok(bounded(self.timeout, query)
            .await?
            .into_iter()
            .map(|(environment, n)| (environment, n.try_into().unwrap_or(0)))
            .collect())
    }

    async fn old_format_page(&self, after: i64, limit: i64) -> Result<Vec<HeadersRow>, StoreError> {
        Ok(sqlx::query_as(rows::OLD_FORMAT_PAGE)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn rewrite_headers(
        &self,
        id: i64,
        old: Vec<u8>,
        new: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(&rows::REWRITE_HEADERS)
            .bind(id)
            .bind(old)
            .bind(new)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Moves rows that hold nothing to convert to the current format.
    async fn mark_format(&self, ids: &[i64]) -> Result<u64, StoreError> {
        let done = sqlx::query(&rows::MARK_FORMAT_POSTGRES)
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// The newest migration applied to the database (0: none) and the
    /// newest this release has.
    async fn schema(&self) -> Result<Schema, StoreError> {
        schema_of(&self.pool).await
    }

    async fn exec(&self, sql: &'static str, params: Vec<Param>) -> Result<u64, StoreError> {
        let mut query = sqlx::query(sql);
        for param in &params {
            query = bind!(query, param.as_value());
        }
        Ok(bounded(self.timeout, query.execute(&self.pool))
            .await?
            .rows_affected())
    }

    /// Rows of an operators' read (sessions, replays, counts), on their
    /// own connections.
    async fn operator_rows<T: OperatorRow>(
        &self,
        sql: String,
        params: Vec<Param>,
    ) -> Result<Vec<T>, StoreError> {
        let mut query = sqlx::query_as::<_, T>(&sql);
        for param in &params {
            query = bind!(query, param.as_value());
        }
        bounded(self.timeout, query.fetch_all(&self.admin)).await
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let due: Option<i64> = sqlx::query_scalar(rows::NEXT_DUE)
            .fetch_one(&self.pool)
            .await?;
        Ok(due.map(Timestamp))
    }

    async fn get(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError> {
        let row: Option<DeliveryRow> = sqlx::query_as(&rows::get_sql())
            .bind(id.0)
            .fetch_optional(&self.admin)
            .await?;
        row.map(Delivery::try_from).transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Delivery>, StoreError> {
        let cursor_at = self.cursor_at(filter).await?;
        let (sql, values) = rows::list_query(filter, cursor_at);
        let mut query = sqlx::query_as::<_, DeliveryRow>(&sql);
        for value in values {
            query = bind!(query, value);
        }
        let found = bounded(self.timeout, query.fetch_all(&self.admin)).await?;
        found.into_iter().map(Delivery::try_from).collect()
    }

    async fn list_plan(
        &self,
        filter: &ListFilter,
        small_table: bool,
    ) -> Result<Vec<String>, StoreError> {
        let cursor_at = self.cursor_at(filter).await?;
        let (sql, values) = rows::list_query(filter, cursor_at);
        let explain = format!("EXPLAIN {sql}");
        let mut query = sqlx::query_scalar::<_, String>(&explain);
        for value in values {
            query = bind!(query, value);
        }
        let mut tx = self.admin.begin().await?;
        if small_table {
            sqlx::query("SET LOCAL enable_seqscan = off")
                .execute(&mut *tx)
                .await?;
        }
        let plan = query.fetch_all(&mut *tx).await?;
        tx.rollback().await?;
        Ok(plan)
    }

    async fn release(&self, claim: &Claimed, now: Timestamp) -> Result<(), StoreError> {
        let release = sqlx::query(rows::RELEASE)
            .bind(claim.id.0)
            .bind(i64::from(claim.attempt))
            .bind(now.0)
            .execute(&self.pool);
        bounded(self.timeout, release).await.map(|_| ())
    }

    async fn retry(&self, id: DeliveryId, now: Timestamp) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(rows::RETRY_ONE_KEEP)
            .bind(id.0)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(rows::RETRY_ONE)
            .bind(id.0)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn retry_dead(
        &self,
        now: Timestamp,
        environment: Option<Environment>,
    ) -> Result<u64, StoreError> {
        let environment = environment.map(|e| e.as_str());
        let mut tx = self.pool.begin().await?;
        sqlx::query(rows::RETRY_DEAD_KEEP)
            .bind(environment)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(rows::RETRY_DEAD)
            .bind(now.0)
            .bind(environment)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// The id an insert returns, on the operators' pool.
    async fn insert_returning(
        &self,
        sql: &'static str,
        params: Vec<Param>,
    ) -> Result<i64, StoreError> {
        self.one_number(&self.admin, sql, &params).await
    }

    /// One number a statement returns, on the relay's own pool (delivery
    /// control: its statements are on the delivery path).
    async fn returning(&self, sql: &'static str, params: Vec<Param>) -> Result<i64, StoreError> {
        self.one_number(&self.pool, sql, &params).await
    }

    /// Rows of two numbers, on the relay's own pool (the replay runner's reads).
    async fn pairs(&self, sql: &'static str) -> Result<Vec<(i64, i64)>, StoreError> {
        bounded(self.timeout, sqlx::query_as(sql).fetch_all(&self.pool)).await
    }

    /// One step in one transaction: the replay's row is locked first, so a
    /// second replica taking the same step waits and then finds it not due;
    /// the deliveries it reaches are locked too, so no claim starts an
    /// attempt between the step's look at them and its update.
    async fn replay_step(&self, id: ReplayId, now: Timestamp) -> Result<Stepped, StoreError> {
        bounded(self.timeout, async {
            let mut tx = self.pool.begin().await?;
            let found: Option<(String, i64, i64, String, i64, i64)> =
                sqlx::query_as(&format!("{} FOR UPDATE", replays::STEP_REPLAY))
                    .bind(id.0)
                    .bind(now.0)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((
                environment,
                received_after,
                received_before,
                statuses,
                cursor_at,
                cursor_id,
            )) = found
            else {
                return Ok::<_, sqlx::Error>(Stepped::default());
            };
            let replay = replays::StepReplay {
                environment,
                received_after,
                received_before,
                statuses,
                cursor_at,
                cursor_id,
            };
            let sql = format!("{} FOR UPDATE", replays::STEP_DELIVERIES);
            let mut query = sqlx::query_as::<_, (i64, i64, i64)>(&sql);
            let params = replay.params(now);
            for param in &params {
                query = bind!(query, param.as_value());
            }
            let found: Vec<replays::Candidate> = query
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(id, received_at, in_flight)| replays::Candidate {
                    id,
                    received_at,
                    in_flight: in_flight != 0,
                })
                .collect();
            let plan = replays::plan_step(&found, replays::STEP_SIZE);
            for delivery in &plan.queue {
                sqlx::query(rows::REPLAY_ONE_KEEP)
                    .bind(delivery)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(rows::REPLAY_ONE)
                    .bind(delivery)
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await?;
            }
            let mut query = sqlx::query(replays::STEP_DONE);
            let params = replay.done_params(id, &plan, now);
            for param in &params {
                query = bind!(query, param.as_value());
            }
            query.execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Stepped {
                queued: plan.queue.len() as u64,
                done: plan.done,
            })
        })
        .await
    }

    /// Attempts go with their deliveries (the foreign key cascades).
    async fn purge_delivered(&self, before: Timestamp) -> Result<u64, StoreError> {
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

    async fn ping(&self) -> Result<(), StoreError> {
        bounded(self.timeout, sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(|_| ())
    }

    async fn close(&self) {
        self.admin.close().await;
        self.pool.close().await;
    }
}

/// Commits what is waiting together: one task takes up to `MAX_GROUP` items,
/// commits them with one statement, and answers each caller after the commit.
/// PostgreSQL then flushes its WAL once per group instead of once per item.
struct Group<T, R> {
    queue: mpsc::Sender<(T, oneshot::Sender<Result<R, StoreError>>)>,
}

impl<T, R> Clone for Group<T, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

/// One result per item: a group can commit while one of its rows is refused.
type Results<R> = Result<Vec<Result<R, StoreError>>, StoreError>;

impl<T: Send + 'static, R: Send + 'static> Group<T, R> {
    /// `commit` must answer one result per item, in order, or one error for
    /// the whole group. The task ends when the last sender (the last clone of
    /// the store) is gone.
    fn start<F, Fut>(what: &'static str, commit: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Results<R>> + Send + 'static,
    {
        let (queue, mut rx) =
            mpsc::channel::<(T, oneshot::Sender<Result<R, StoreError>>)>(MAX_GROUP * 8);
        let commit = Arc::new(commit);
        // A few groups commit at once, so the next group fills while one flushes.
        let in_flight = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let Ok(slot) = Arc::clone(&in_flight).acquire_owned().await else {
                    return;
                };
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                let commit = Arc::clone(&commit);
                tokio::spawn(async move {
                    let _slot = slot;
                    let (items, replies): (Vec<T>, Vec<_>) = group.into_iter().unzip();
                    match commit(items).await {
                        Ok(results) => {
                            for (reply, result) in replies.into_iter().zip(results) {
                                let _ = reply.send(result);
                            }
                        }
                        Err(e) => {
                            let reason = e.to_string();
                            tracing::error!(error = %reason, count = replies.len(), "could not commit a group of {what}");
                            for reply in replies {
                                let _ = reply.send(Err(StoreError::Commit(reason.clone())));
                            }
                        }
                    }
                });
            }
        });
        Self { queue }
    }

    async fn submit(&self, item: T, timeout: Duration) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        let queued = async {
            self.queue
                .send((item, reply))
                .await
                .map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        };
        tokio::time::timeout(timeout, queued)
            .await
            .map_err(|_| StoreError::Timeout(timeout))?
    }
}

/// Inserts the events and tells each whether it was the one inserted. The same
/// event twice in one group is inserted once: the first is `New`, the others
/// `Duplicate`, as if they had come one after the other.
///
/// When the database refuses the group's statement (it answered, so it is up),
/// the cause may be one row: each event is then inserted on its own, so one
/// bad row fails alone and the others are committed.
async fn insert_group(pool: PgPool, timeout: Duration, events: Vec<NewEvent>) -> Results<Accepted> {
    match insert_events(&pool, timeout, &events).await {
        Ok(accepted) => Ok(accepted.into_iter().map(Ok).collect()),
        Err(StoreError::Database(sqlx::Error::Database(e))) if events.len() > 1 => {
            tracing::warn!(error = %e, count = events.len(), "a group of webhooks was refused; committing each on its own");
            let mut results = Vec::with_capacity(events.len());
            for event in &events {
                let one = insert_events(&pool, timeout, std::slice::from_ref(event)).await;
                results.push(one.map(|mut a| a.remove(0)).map_err(refused_or_not));
            }
            Ok(results)
        }
        Err(e) => Ok(vec_of_errors(refused_or_not(e), events.len())),
    }
}

/// A data exception (SQLSTATE class 22, e.g. a character the database
/// cannot store) is about the row, and sending it again cannot help.
fn refused_or_not(e: StoreError) -> StoreError {
    match &e {
        StoreError::Database(sqlx::Error::Database(db))
            if db.code().is_some_and(|c| c.starts_with("22")) =>
        {
            StoreError::Refused(db.message().to_owned())
        }
        _ => e,
    }
}

fn vec_of_errors<R>(e: StoreError, n: usize) -> Vec<Result<R, StoreError>> {
    let reason = e.to_string();
    let mut out = Vec::with_capacity(n);
    out.push(Err(e));
    out.extend((1..n).map(|_| Err(StoreError::Commit(reason.clone()))));
    out
}

async fn insert_events(
    pool: &PgPool,
    timeout: Duration,
    events: &[NewEvent],
) -> Result<Vec<Accepted>, StoreError> {
    let text = |f: fn(&NewEvent) -> &str| -> Vec<&str> { events.iter().map(f).collect() };
    let insert = sqlx::query_as::<_, (i64, String, String)>(ACCEPT_GROUP)
        .bind(text(|e| e.environment.as_str()))
        .bind(text(|e| e.event_id.as_str()))
        .bind(text(|e| e.event_type.as_str()))
        .bind(text(|e| e.token.as_str()))
        .bind(
            events
                .iter()
                .map(|e| e.stored_body())
                .collect::<Vec<&[u8]>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.stored_headers().into_owned())
                .collect::<Vec<Vec<u8>>>(),
        )
        .bind(events.iter().map(|e| e.received_at.0).collect::<Vec<i64>>())
        .bind(
            events
                .iter()
                .map(|e| e.leased_until.map(|t| t.0))
                .collect::<Vec<Option<i64>>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.payment_id.as_ref().map(|p| p.as_str()))
                .collect::<Vec<Option<&str>>>(),
        )
        .bind(events.iter().map(NewEvent::format).collect::<Vec<i64>>())
        .bind(
            events
                .iter()
                .map(NewEvent::sealed_by)
                .collect::<Vec<Option<String>>>(),
        )
        .fetch_all(pool);
    let mut ids: HashMap<(String, String), i64> = bounded(timeout, insert)
        .await?
        .into_iter()
        .map(|(id, event_id, environment)| ((event_id, environment), id))
        .collect();
    Ok(events
        .iter()
        .map(|event| {
            let key = (
                event.event_id.as_str().to_owned(),
                event.environment.as_str().to_owned(),
            );
            ids.remove(&key)
                .map_or(Accepted::Duplicate, |id| Accepted::New(DeliveryId(id)))
        })
        .collect())
}

async fn finish_group(
    pool: PgPool,
    timeout: Duration,
    outcomes: Vec<rows::FinishRow>,
) -> Results<()> {
    // Planned on every call: a plan cached while the table was small joins by
    // scanning it, and turned each group into a scan of the whole table as it
    // grew (15 ms for 8 rows, delivery three times slower, seen in the bench).
    let update = sqlx::query(&FINISH_GROUP)
        .persistent(false)
        .bind(outcomes.iter().map(|o| o.id).collect::<Vec<i64>>())
        .bind(outcomes.iter().map(|o| o.attempt).collect::<Vec<i64>>())
        .bind(outcomes.iter().map(|o| o.status).collect::<Vec<&str>>())
        .bind(outcomes.iter().map(|o| o.at).collect::<Vec<Option<i64>>>())
        .bind(
            outcomes
                .iter()
                .map(|o| o.http_status)
                .collect::<Vec<Option<i64>>>(),
        )
        .bind(
            outcomes
                .iter()
                .map(|o| o.error.as_deref())
                .collect::<Vec<Option<&str>>>(),
        )
        .bind(outcomes.iter().map(|o| o.started_at).collect::<Vec<i64>>())
        .bind(outcomes.iter().map(|o| o.duration_ms).collect::<Vec<i64>>())
        .bind(
            outcomes
                .iter()
                .map(|o| o.attempt_status)
                .collect::<Vec<Option<i64>>>(),
        )
        .bind(outcomes.iter().map(|o| o.kind).collect::<Vec<&str>>())
        .bind(
            outcomes
                .iter()
                .map(|o| o.message.as_deref())
                .collect::<Vec<Option<&str>>>(),
        )
        .execute(&pool);
    bounded(timeout, update).await?;
    Ok(outcomes.iter().map(|_| Ok(())).collect())
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
