//! Durable state: every accepted event and its delivery. No SQL outside this folder.
//!
//! A delivery is `pending` until Accelerate answers 2xx (`delivered`) or the
//! retry schedule is used up (`dead`). The worker takes due deliveries with a
//! lease (`claim_due`), so an attempt cut short by a crash is simply claimed again
//! once the lease runs out.

mod at_rest;
mod backend;
mod controls;
mod headers;
mod postgres;
mod replays;
mod rows;
mod sessions;
mod sqlite;
mod timestamp;

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;

use crate::config::DatabaseConfig;
use crate::event::{AccelerateToken, Environment, EventId, EventType, PaymentId};
use crate::seal::{KeyId, SealError, StoreKeys};
use crate::verify::Credentials;

use backend::{Backend, Engine};

pub use at_rest::Sealing;
pub use controls::Control;
use headers::HeldKey;
pub use headers::{Forward, ForwardHeaders};
use postgres::PgStore;
pub use replays::{Replay, ReplayId, ReplayRequest, ReplayState, Stepped, STEP_EVERY, STEP_SIZE};
pub use sessions::{EndedBy, StoredSession};
use sqlite::SqliteStore;
pub use timestamp::{parse_utc, Timestamp};

pub use rows::FORMAT;

/// The schema a database holds (its newest migration) beside the newest
/// this release has: the fence of a rolling upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schema {
    pub found: u64,
    pub known: u64,
}

impl Schema {
    /// A newer release migrated the database: this one must not deliver
    /// from it (it cannot know what the newer one stores).
    pub fn is_newer(&self) -> bool {
        self.found > self.known
    }

    /// An operator's command never migrates: on SQLite that would close the
    /// fence under the running relay, which is of the older release.
    pub fn older_for_a_command(&self) -> Option<String> {
        (self.found < self.known).then(|| {
            format!(
                "the database schema is version {}, older than this command knows (version {}): \
                 the relay on it runs an older release. Use that release's command, or upgrade \
                 the relay first (it migrates the database when it starts)",
                self.found, self.known
            )
        })
    }

    /// Whether `role` may open a database of this schema: no one a newer
    /// one; an operator's command not an older one either.
    pub fn admits(&self, role: Role) -> Result<(), StoreError> {
        if self.is_newer() {
            return Err(StoreError::Unusable(self.refusal()));
        }
        match (role, self.older_for_a_command()) {
            (Role::Tool, Some(older)) => Err(StoreError::Unusable(older)),
            _ => Ok(()),
        }
    }

    /// What an operator reads when this release meets a newer schema.
    pub fn refusal(&self) -> String {
        format!(
            "the database schema is version {}, newer than this release of accelerate-relay knows \
             (version {}): a newer release has migrated it. Run that release or a newer one; \
             to go back to this release, follow the README's upgrade notes (rolling back)",
            self.found, self.known
        )
    }
}

/// The store the relay runs on, chosen by `RELAY_DATABASE_URL` when it is
/// opened and never again: every call below goes through `Backend`.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
}

impl Store {
    /// Opens the database, runs the embedded migrations and starts what the
    /// backend needs in the background (the SQLite writer).
    pub async fn open(config: &DatabaseConfig, role: Role) -> Result<Self, StoreError> {
        let url = config.url.expose();
        let engine = if url.starts_with("sqlite:") {
            let keys = config.store_key.clone();
            Engine::Sqlite(SqliteStore::open(url, role, keys).await?)
        } else {
            Engine::Postgres(PgStore::open(config, role).await?)
        };
        Ok(Store { engine })
    }

    /// Stores a new event with its pending delivery, or reports that its id was
    /// already accepted for this environment. `Ok` means committed to disk.
    pub async fn accept(&self, mut event: NewEvent) -> Result<Accepted, StoreError> {
        if let Some(keys) = self.keys() {
            event.sealed = Some(Sealed::of(&event, keys));
        }
        self.engine.accept(event).await
    }

    /// Leases up to `limit` due deliveries of `environment` until `now +
    /// lease`, oldest due first, counting the attempt.
    pub async fn claim_due(
        &self,
        now: Timestamp,
        lease: Duration,
        environment: Environment,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        let found = self
            .engine
            .claim_due(now, lease, environment, limit)
            .await?;
        let keys = self.keys();
        found
            .into_iter()
            .map(|row| row.into_claimed(keys))
            .collect()
    }

    /// `RELAY_STORE_KEY`, when set.
    pub fn keys(&self) -> Option<&StoreKeys> {
        self.engine.keys()
    }

    /// Records how an attempt ended, and the attempt in the delivery's history,
    /// in one transaction. The outcome is ignored when the lease was lost and
    /// the delivery claimed again since (the attempt number no longer
    /// matches); the attempt is recorded anyway, since it was made.
    pub async fn finish(
        &self,
        claim: &Claimed,
        outcome: Outcome,
        attempt: AttemptRecord,
    ) -> Result<(), StoreError> {
        self.engine.finish(claim, outcome, attempt).await
    }

    /// The one count an operators' read answers.
    async fn count(&self, sql: &str, params: Vec<rows::Param>) -> Result<u64, StoreError> {
        let counted = self
            .engine
            .operator_rows::<(i64,)>(sql.to_owned(), params)
            .await?;
        Ok(counted
            .first()
            .map_or(0, |(n,)| u64::try_from(*n).unwrap_or(0)))
    }

    /// A delivery with its attempt history, as the admin API and CLI show it.
    pub async fn detail(&self, id: DeliveryId) -> Result<Option<DeliveryDetail>, StoreError> {
        let Some(delivery) = self.get(id).await? else {
            return Ok(None);
        };
        let attempt_history = self.attempts(id).await?;
        Ok(Some(DeliveryDetail {
            delivery,
            attempt_history,
        }))
    }

    /// A delivery's attempts, oldest first.
    pub async fn attempts(&self, id: DeliveryId) -> Result<Vec<AttemptView>, StoreError> {
        self.engine.attempts(id).await
    }

    /// Pending and dead counts and the oldest pending event per environment,
    /// for the metrics scrape. Reads the pending rows through the due index
    /// and the dead ones through an index of their own.
    pub async fn gauges(&self) -> Result<Vec<Gauges>, StoreError> {
        self.engine.gauges().await
    }

    /// Per environment, what waits, what was delivered (and is still kept)
    /// and what is dead, for the console's overview.
    pub async fn counts(&self) -> Result<Vec<Counts>, StoreError> {
        let gauges = self.gauges().await?;
        let delivered = self.engine.delivered_counts().await?;
        Ok(Environment::ALL
            .iter()
            .map(|env| {
                let open = gauges.iter().find(|g| g.environment == env.as_str());
                Counts {
                    environment: *env,
                    pending: open.map_or(0, |g| g.pending),
                    dead: open.map_or(0, |g| g.dead),
                    oldest_pending: open.and_then(|g| g.oldest_pending),
                    delivered: delivered
                        .iter()
                        .find(|(e, _)| e == env.as_str())
                        .map_or(0, |(_, n)| *n),
                }
            })
            .collect())
    }

    /// Converts rows of an older format (written before the fence, or by a
    /// release before it still running beside this one) to `FORMAT`: an
    /// Authorization value still held in clear becomes a reference to the
    /// configured key (`credentials` of the row's environment). Each row is
    /// rewritten only if unchanged since it was read, so it is safe beside
    /// other replicas and after a crash halfway; there is no marker, so a row
    /// an older replica writes later is met by the next sweep. Rows of an
    /// environment without keys now are left for a later sweep. Returns
    /// (keys converted, rows left).
    pub async fn convert_old_formats<'c>(
        &self,
        credentials: impl Fn(Environment) -> Option<&'c Credentials>,
    ) -> Result<(u64, u64), StoreError> {
        const PAGE: i64 = 500;
        let (mut converted, mut left, mut after) = (0, 0, 0);
        loop {
            let page = self.engine.old_format_page(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.0;
            let mut nothing_held = Vec::with_capacity(page.len());
            for (id, environment, raw) in page {
                let keys = environment.parse().ok().and_then(&credentials);
                let new = match ForwardHeaders::replace_held_key(&raw, keys) {
                    Some(HeldKey::Replaced(new)) => new,
                    Some(HeldKey::NoKeys) => {
                        left += 1;
                        continue;
                    }
                    Some(HeldKey::Nothing) | None => {
                        nothing_held.push(id);
                        continue;
                    }
                };
                let rewritten = self.engine.rewrite_headers(id, raw, new).await?;
                converted += u64::from(rewritten);
            }
            if !nothing_held.is_empty() {
                self.engine.mark_format(&nothing_held).await?;
            }
        }
        if converted > 0 {
            self.engine.scrub_wal();
        }
        Ok((converted, left))
    }

    /// The schema in the database beside the one this release knows.
    pub async fn schema(&self) -> Result<Schema, StoreError> {
        self.engine.schema().await
    }

    /// Gives back a claim whose attempt was never started (a clean shutdown):
    /// lease cleared, due at `now`, the attempt count as before the claim.
    pub async fn release(&self, claim: &Claimed, now: Timestamp) -> Result<(), StoreError> {
        self.engine.release(claim, now).await
    }

    /// The earliest time a pending delivery becomes due, so the worker can sleep until then.
    pub async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.engine.next_due().await
    }

    pub async fn get(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError> {
        self.engine.get(id).await
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Delivery>, StoreError> {
        self.engine.list(filter).await
    }

    /// How the database would answer `list(filter)`: its query plan, one
    /// line per step, for the benchmark's output and the tests that hold
    /// each filter to an index. `small_table`: on PostgreSQL, plan as if the
    /// table were large (sequential scans off), so a test's few rows show
    /// whether an index can serve the query.
    pub async fn list_plan(
        &self,
        filter: &ListFilter,
        small_table: bool,
    ) -> Result<Vec<String>, StoreError> {
        self.engine.list_plan(filter, small_table).await
    }

    /// Makes a delivery (of any status) pending and due now; `false` when it does not exist.
    pub async fn retry(&self, id: DeliveryId, now: Timestamp) -> Result<Retried, StoreError> {
        if self.engine.retry(id, now).await? {
            return Ok(Retried::Due);
        }
        Ok(match self.get(id).await? {
            None => Retried::NotFound,
            Some(delivery) => Retried::InFlight {
                lease_ends: delivery.next_attempt_at,
            },
        })
    }

    /// Makes every dead delivery (of `environment`, or of both) pending and
    /// due now; returns how many.
    pub async fn retry_dead(
        &self,
        now: Timestamp,
        environment: Option<Environment>,
    ) -> Result<u64, StoreError> {
        self.engine.retry_dead(now, environment).await
    }

    /// Deletes delivered events received before `before` (they hold card holder
    /// data). Pending and dead deliveries are never deleted by the relay.
    pub async fn purge_delivered(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.engine.purge_delivered(before).await
    }

    /// Whether the store answers, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.engine.ping().await
    }

    /// Lets writes in flight commit, then closes the database.
    pub async fn close(&self) {
        self.engine.close().await
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

/// A delivery's public id, `dlv_<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeliveryId(pub i64);

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_public_id(f, "dlv_", self.0)
    }
}

serialize_as_display!(DeliveryId, Status, AttemptKind);

/// Only the spelling the relay prints (`dlv_` and a positive number without
/// sign or leading zeros): an operator's id names one delivery, one way.
impl FromStr for DeliveryId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        canonical_id(s, "dlv_")
            .map(DeliveryId)
            .ok_or_else(|| format!("`{s}` is not a delivery id (dlv_ and a number, e.g. dlv_42)"))
    }
}

/// A public id as the relay prints it, filling a column's width when one is
/// asked for (only then does it cost a copy: ids are printed on every answer).
pub(crate) fn write_public_id(f: &mut fmt::Formatter<'_>, prefix: &str, n: i64) -> fmt::Result {
    match f.width() {
        Some(_) => f.pad(&format!("{prefix}{n}")),
        None => write!(f, "{prefix}{n}"),
    }
}

/// The number of a public id (`dlv_7`, `rpl_3`) spelt as the relay prints
/// it: the prefix, then digits without sign or leading zeros.
pub(crate) fn canonical_id(s: &str, prefix: &str) -> Option<i64> {
    s.strip_prefix(prefix)
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0'))
        .and_then(|n| n.parse::<i64>().ok())
}

/// What a manual retry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retried {
    /// Pending and due now, with the whole schedule again.
    Due,
    NotFound,
    /// An attempt is being made (until its lease ends at the latest); the
    /// retry is refused rather than sent beside it.
    InFlight {
        lease_ends: Option<Timestamp>,
    },
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

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
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

/// An event that passed every check, ready to be committed.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub environment: Environment,
    pub event_id: EventId,
    pub event_type: EventType,
    pub token: AccelerateToken,
    /// Checkout.com's `data.id`, when the event has a usable one.
    pub payment_id: Option<PaymentId>,
    pub body: Bytes,
    pub headers: ForwardHeaders,
    pub received_at: Timestamp,
    /// Set when the accepting process delivers the event itself from memory:
    /// the row is inserted already claimed (attempt 1, leased until then), so
    /// no claim statement and no read of the body are needed for the first
    /// attempt. If that process dies, the lease runs out and the polling
    /// claim takes the row, as for any attempt cut short.
    pub leased_until: Option<Timestamp>,
    /// Body and headers as sealed for the store, when `RELAY_STORE_KEY` is
    /// set (done by `Store::accept`, off the SQLite writer's thread).
    pub sealed: Option<Sealed>,
}

/// An event's body and headers sealed with the store key `by` (`seal`).
#[derive(Clone, Debug)]
pub struct Sealed {
    body: Vec<u8>,
    headers: Vec<u8>,
    by: KeyId,
}

impl Sealed {
    fn of(event: &NewEvent, keys: &StoreKeys) -> Self {
        let (body, headers) = keys.seal_row(
            event.environment,
            event.event_id.as_str(),
            &event.body,
            &event.headers.encode(),
        );
        Sealed {
            body,
            headers,
            by: keys.current(),
        }
    }
}

impl NewEvent {
    /// The body as it rests in the store.
    pub fn stored_body(&self) -> &[u8] {
        self.sealed.as_ref().map_or(&self.body, |s| &s.body)
    }

    /// The headers as they rest in the store.
    pub fn stored_headers(&self) -> Cow<'_, [u8]> {
        match &self.sealed {
            Some(s) => Cow::Borrowed(&s.headers),
            None => Cow::Owned(self.headers.encode()),
        }
    }

    /// The row's store format (`rows::FORMAT_*`).
    pub fn format(&self) -> i64 {
        match self.sealed {
            Some(_) => rows::FORMAT_SEALED,
            None => rows::FORMAT_CLEAR,
        }
    }

    /// The key id recorded beside a sealed row.
    pub fn sealed_by(&self) -> Option<String> {
        self.sealed.as_ref().map(|s| s.by.to_string())
    }

    /// The claim of the first attempt of this event when it is inserted
    /// leased (`leased_until`) as delivery `id`.
    pub fn first_claim(&self, id: DeliveryId) -> Claimed {
        Claimed {
            id,
            environment: self.environment,
            event_id: self.event_id.as_str().to_owned(),
            body: self.body.clone(),
            headers: self.headers.clone(),
            attempt: 1,
            schedule_attempt: 1,
            received_at: self.received_at,
            unopened: None,
        }
    }
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
    /// Why its stored body or headers did not open (`seal`): nothing to send.
    pub unopened: Option<SealError>,
}

/// How an attempt ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    Delivered {
        at: Timestamp,
        status: u16,
    },
    Retry {
        at: Timestamp,
        error: String,
    },
    /// Failed while the environment's breaker is open: pending again, its
    /// place in the retry schedule kept (it moves no closer to dead).
    Held {
        at: Timestamp,
        error: String,
    },
    Dead {
        error: String,
    },
}

/// How an attempt ended, as the history and the metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptKind {
    Delivered,
    Http3xx,
    Http4xx,
    Http429,
    Http5xx,
    Timeout,
    Connect,
    /// The TLS handshake failed: an untrusted or expired certificate, a
    /// wrong host name, a server that does not speak TLS.
    Tls,
    /// The egress proxy could not be reached or refused the tunnel.
    Proxy,
    Other,
}

impl fmt::Display for AttemptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl AttemptKind {
    /// In declaration order: `self as usize` is a kind's place here.
    pub const ALL: [AttemptKind; 10] = [
        AttemptKind::Delivered,
        AttemptKind::Http3xx,
        AttemptKind::Http4xx,
        AttemptKind::Http429,
        AttemptKind::Http5xx,
        AttemptKind::Timeout,
        AttemptKind::Connect,
        AttemptKind::Tls,
        AttemptKind::Proxy,
        AttemptKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptKind::Delivered => "delivered",
            AttemptKind::Http3xx => "http_3xx",
            AttemptKind::Http4xx => "http_4xx",
            AttemptKind::Http429 => "http_429",
            AttemptKind::Http5xx => "http_5xx",
            AttemptKind::Timeout => "timeout",
            AttemptKind::Connect => "connect",
            AttemptKind::Tls => "tls",
            AttemptKind::Proxy => "proxy",
            AttemptKind::Other => "other",
        }
    }

    /// The kind a stored attempt names. One a newer release records that
    /// this one does not know reads as `other`, not as a broken history.
    pub fn named(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .unwrap_or(AttemptKind::Other)
    }

    /// The kind of an answer Accelerate gave.
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => AttemptKind::Delivered,
            429 => AttemptKind::Http429,
            300..=399 => AttemptKind::Http3xx,
            400..=499 => AttemptKind::Http4xx,
            500..=599 => AttemptKind::Http5xx,
            _ => AttemptKind::Other,
        }
    }
}

/// One attempt as it was made, for the delivery's history.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub started_at: Timestamp,
    pub duration: Duration,
    pub http_status: Option<u16>,
    pub kind: AttemptKind,
    /// Short and about the transport or status only: never a body or header.
    pub message: Option<String>,
}

/// One attempt as operators see it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub started_at: Timestamp,
    pub duration_ms: u64,
    pub http_status: Option<u16>,
    pub outcome: AttemptKind,
    pub message: Option<String>,
}

/// A delivery and its attempts, oldest first.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: Delivery,
    pub attempt_history: Vec<AttemptView>,
}

/// What the metrics scrape reads from the store, per environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub environment: String,
    pub pending: u64,
    pub dead: u64,
    pub oldest_pending: Option<Timestamp>,
}

/// One environment's deliveries by status, as the console shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counts {
    pub environment: Environment,
    pub pending: u64,
    pub delivered: u64,
    pub dead: u64,
    pub oldest_pending: Option<Timestamp>,
}

/// A delivery as operators see it (no body, no headers, redacted token).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Delivery {
    pub id: DeliveryId,
    pub environment: Environment,
    pub event_id: String,
    pub event_type: String,
    /// Already redacted: the store never hands a view the whole token.
    pub accelerate_token: String,
    pub status: Status,
    pub attempts: u32,
    pub next_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub received_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
    /// Checkout.com's `data.id`; none for events stored before it was kept.
    pub payment_id: Option<String>,
}

impl ListFilter {
    /// Most deliveries one page lists, and how many when no limit is given.
    pub const MAX_LIMIT: u32 = 500;
    pub const DEFAULT_LIMIT: u32 = 50;

    /// Reads `name=value` pairs (the admin API's query, the CLI's flags); an
    /// unknown name is an error rather than a filter silently not applied.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, String> {
        fn typed<T: FromStr>(name: &str, value: &str) -> Result<T, String>
        where
            T::Err: fmt::Display,
        {
            value.parse().map_err(|e| format!("{name}: {e}"))
        }
        // No stored id or token holds a NUL or another control character
        // (they are refused at accept), and PostgreSQL cannot even compare
        // one: refused here, naming the filter, before the database sees it.
        fn storable(name: &str, value: &str) -> Result<String, String> {
            if value.chars().any(char::is_control) {
                return Err(format!(
                    "{name}: holds a NUL or another control character, which no stored value has"
                ));
            }
            Ok(value.to_owned())
        }
        let mut filter = ListFilter {
            limit: Self::DEFAULT_LIMIT,
            ..ListFilter::default()
        };
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in pairs {
            // A repeated filter is refused: which of the two was meant is
            // not ours to guess.
            if seen.contains(&name) {
                return Err(format!("{name}: given more than once; give it once"));
            }
            seen.push(name);
            match name {
                "status" => filter.status = Some(typed(name, value)?),
                "environment" => filter.environment = Some(typed(name, value)?),
                "accelerate_token" => filter.accelerate_token = Some(storable(name, value)?),
                "event_id" => filter.event_id = Some(storable(name, value)?),
                "payment_id" => filter.payment_id = Some(storable(name, value)?),
                "received_after" => filter.received_after = Some(parse_utc(name, value)?),
                "received_before" => filter.received_before = Some(parse_utc(name, value)?),
                "cursor" => filter.before = Some(typed(name, value)?),
                "limit" => {
                    filter.limit = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=Self::MAX_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit: must be 1 to {}", Self::MAX_LIMIT))?
                }
                other => {
                    return Err(format!(
                        "unknown filter `{other}`; use status, environment, accelerate_token, \
                         event_id, payment_id, received_after, received_before, limit or cursor"
                    ))
                }
            }
        }
        Ok(filter)
    }
}

/// Every field narrows the list; `before` is the keyset cursor (the listing
/// is newest first, so the next page holds ids below the last one shown).
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub environment: Option<Environment>,
    pub accelerate_token: Option<String>,
    pub event_id: Option<String>,
    pub payment_id: Option<String>,
    pub received_after: Option<Timestamp>,
    pub received_before: Option<Timestamp>,
    pub before: Option<DeliveryId>,
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed views serialise to the text the admin API has always
    /// answered: ids, statuses and environments as names, times as RFC 3339.
    #[test]
    fn a_delivery_detail_serialises_to_its_documented_json() {
        let detail = DeliveryDetail {
            delivery: Delivery {
                id: DeliveryId(42),
                environment: Environment::Production,
                event_id: "evt_1".into(),
                event_type: "payment_approved".into(),
                accelerate_token: "tok_…abcd".into(),
                status: Status::Pending,
                attempts: 1,
                next_attempt_at: Some(Timestamp(1_796_688_000_250)),
                last_error: Some("HTTP 503".into()),
                received_at: Timestamp(1_796_688_000_000),
                delivered_at: None,
                payment_id: Some("pay_1".into()),
            },
            attempt_history: vec![AttemptView {
                attempt: 1,
                started_at: Timestamp(1_796_688_000_100),
                duration_ms: 12,
                http_status: Some(503),
                outcome: AttemptKind::Http5xx,
                message: None,
            }],
        };
        assert_eq!(
            serde_json::to_value(&detail).expect("serialises"),
            serde_json::json!({
                "id": "dlv_42",
                "environment": "production",
                "event_id": "evt_1",
                "event_type": "payment_approved",
                "accelerate_token": "tok_…abcd",
                "status": "pending",
                "attempts": 1,
                "next_attempt_at": "2026-12-08T00:00:00.250Z",
                "last_error": "HTTP 503",
                "received_at": "2026-12-08T00:00:00.000Z",
                "delivered_at": null,
                "payment_id": "pay_1",
                "attempt_history": [{
                    "attempt": 1,
                    "started_at": "2026-12-08T00:00:00.100Z",
                    "duration_ms": 12,
                    "http_status": 503,
                    "outcome": "http_5xx",
                    "message": null,
                }],
            })
        );
    }

    /// The CLI's one-line listings line their columns up with these widths.
    #[test]
    fn ids_statuses_and_environments_fill_a_column() {
        assert_eq!(
            format!(
                "{:<8}|{:<9}|{:<10}|",
                DeliveryId(7),
                Status::Dead,
                Environment::Sandbox
            ),
            "dlv_7   |dead     |sandbox   |"
        );
        assert_eq!(format!("{:<6}|", AttemptKind::Tls), "tls   |");
    }

    /// A kind a newer release records reads as `other`, every known one as itself.
    #[test]
    fn a_stored_attempt_kind_reads_back_by_its_name() {
        for kind in AttemptKind::ALL {
            assert_eq!(AttemptKind::named(kind.as_str()), kind);
        }
        assert_eq!(AttemptKind::named("http_418_teapot"), AttemptKind::Other);
    }

    /// The metrics index their attempt counters by `kind as usize`.
    #[test]
    fn every_attempt_kind_is_listed_at_its_own_place() {
        for (place, kind) in AttemptKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, place, "{kind:?}");
        }
    }
}
