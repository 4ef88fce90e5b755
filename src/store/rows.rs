//! Row shapes and SQL shared by both backends (both accept `$N` parameters).

use std::sync::LazyLock;

use bytes::Bytes;

use super::{
    AttemptKind, AttemptRecord, AttemptView, Claimed, Delivery, DeliveryId, ForwardHeaders,
    ListFilter, Outcome, Status, StoreError, Timestamp,
};
use crate::event::{redact, Environment};
use crate::seal::{self, StoreKeys};

/// `$7` received, `$8` the lease end of an event inserted already claimed
/// (NULL: due now, for the polling claim), `$9` the payment id (or NULL),
/// `$10` the row's format (`FORMAT_CLEAR` or `FORMAT_SEALED`), `$11` the
/// store key that sealed body and headers (NULL: in clear).
/// The parameters first appear in order, as SQLite numbers them by
/// appearance.
pub const ACCEPT: &str = "INSERT INTO deliveries \
     (environment, event_id, event_type, accelerate_token, body, headers, received_at, \
     leased_until, next_attempt_at, attempts, payment_id, format, sealed_by) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, COALESCE($8, $7), CASE WHEN $8 IS NULL THEN 0 ELSE 1 END, $9, $10, $11) \
     ON CONFLICT (event_id, environment) DO NOTHING RETURNING id";

/// Leases due deliveries: `$1` lease end, `$2` now, `$3` how many, `$4` the environment.
/// Only rows of a format this release knows (the fence: a newer release's
/// rows wait for a newer replica).
///
/// A claimed row's `next_attempt_at` becomes its lease end, so "due" is one
/// range of the `deliveries_due_by_environment` index: rows in flight are simply not due yet,
/// and a row whose attempt died with its process becomes due when the lease
/// runs out. `leased_until` only records that an attempt is in flight.
pub fn claim_sql(skip_locked: bool) -> &'static str {
    // Built once: claims and outcomes are on the delivery hot path.
    static PLAIN: LazyLock<String> = LazyLock::new(|| claim_text(""));
    static SKIP_LOCKED: LazyLock<String> = LazyLock::new(|| claim_text(" FOR UPDATE SKIP LOCKED"));
    if skip_locked {
        &SKIP_LOCKED
    } else {
        &PLAIN
    }
}

fn claim_text(lock: &str) -> String {
    format!(
        "UPDATE deliveries SET next_attempt_at = $1, leased_until = $1, attempts = attempts + 1 \
         WHERE id IN (SELECT id FROM deliveries WHERE status = 'pending' AND environment = $4 \
         AND next_attempt_at <= $2 AND format <= {FORMAT} ORDER BY next_attempt_at LIMIT $3{lock}) \
         RETURNING id, environment, event_id, body, headers, attempts, attempts_base, received_at, sealed_by"
    )
}

/// The columns an outcome sets. The arguments name where the new status, time,
/// Accelerate's status and the error come from.
/// The attempt that delivers is kept in the row (`delivered_*`), not in
/// `attempts`: `attempt`, `started` and `took` name where it comes from.
pub fn finish_set(
    status: &str,
    at: &str,
    http_status: &str,
    error: &str,
    [attempt, started, took]: [&str; 3],
) -> String {
    let delivered = |column: &str, value: &str| {
        format!("{column} = CASE WHEN {status} = 'delivered' THEN {value} ELSE {column} END")
    };
    // 'held' (the breaker is open) is pending again without a place in the
    // schedule spent: the base moves up with the attempt count.
    format!(
        "{}, {}, {}, status = CASE WHEN {status} = 'held' THEN 'pending' ELSE {status} END, \
         attempts_base = CASE WHEN {status} = 'held' THEN attempts_base + 1 ELSE attempts_base END, \
         next_attempt_at = CASE WHEN {status} IN ('pending', 'held') THEN {at} ELSE next_attempt_at END, \
         delivered_at = CASE WHEN {status} = 'delivered' THEN {at} ELSE delivered_at END, \
         last_status = COALESCE({http_status}, last_status), last_error = {error}, leased_until = NULL",
        delivered("delivered_attempt", attempt),
        delivered("delivered_started_at", started),
        delivered("delivered_duration_ms", took),
    )
}

/// Records one outcome: `$1` id, `$2` attempt number claimed, then
/// `FinishRow`'s values. The attempt number fences off an attempt whose lease
/// ran out and was claimed again; the lease itself fences off an attempt that
/// was still running when an operator retried the delivery (the retry clears
/// the lease, and its own attempt must not be overwritten by the old one).
pub fn finish_one_sql() -> &'static str {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE deliveries SET {} WHERE id = $1 AND attempts = $2 AND status = 'pending' \
             AND leased_until IS NOT NULL",
            finish_set("$3", "$4", "$5", "$6", ["$2", "$7", "$8"])
        )
    });
    &SQL
}

/// An outcome as stored, with the attempt that led to it.
#[derive(Clone, Debug)]
pub struct FinishRow {
    pub id: i64,
    pub attempt: i64,
    pub status: &'static str,
    pub at: Option<i64>,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub started_at: i64,
    pub duration_ms: i64,
    pub attempt_status: Option<i64>,
    pub kind: &'static str,
    pub message: Option<String>,
}

/// `$1` delivery, `$2` attempt, `$3` started, `$4` duration, `$5` Accelerate's
/// status, `$6` outcome kind, `$7` message. An attempt is recorded once.
pub const RECORD_ATTEMPT: &str = "INSERT INTO attempts \
     (delivery_id, attempt, started_at, duration_ms, http_status, outcome, message) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";

/// The attempts that did not deliver, and the one that did (kept in the
/// delivery row since 0006; before, it had a row of `attempts` too).
pub const ATTEMPTS: &str =
    "SELECT attempt, started_at, duration_ms, http_status, outcome, message \
     FROM attempts WHERE delivery_id = $1 \
     UNION ALL SELECT d.delivered_attempt, d.delivered_started_at, d.delivered_duration_ms, \
     d.last_status, 'delivered', NULL FROM deliveries d WHERE d.id = $1 \
     AND d.delivered_attempt IS NOT NULL AND NOT EXISTS \
     (SELECT 1 FROM attempts a WHERE a.delivery_id = d.id AND a.attempt = d.delivered_attempt) \
     ORDER BY 1";

/// Per environment: pending count and oldest, dead count.
pub const GAUGES: &str = "SELECT environment, \
     SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), \
     SUM(CASE WHEN status = 'dead' THEN 1 ELSE 0 END), \
     MIN(CASE WHEN status = 'pending' THEN received_at END) \
     FROM (SELECT environment, status, received_at FROM deliveries WHERE status = 'pending' \
     UNION ALL SELECT environment, status, received_at FROM deliveries WHERE status = 'dead') AS open \
     GROUP BY environment";

/// The newest store format this release writes and delivers (migrations
/// 0011 and 0012 list them). A claim takes no row of a newer one.
pub const FORMAT: i64 = FORMAT_SEALED;
/// Authorization as a key reference; body and headers in clear.
pub const FORMAT_CLEAR: i64 = 1;
/// Body and headers sealed with the store key `sealed_by` names.
pub const FORMAT_SEALED: i64 = 2;

/// Rows of an older format, in id order, a page at a time (`$1` after this
/// id, `$2` how many), through the index of those rows alone.
pub const OLD_FORMAT_PAGE: &str = "SELECT id, environment, headers FROM deliveries \
     WHERE format < 1 AND id > $1 ORDER BY id LIMIT $2";
/// Only while the headers are what was read: a concurrent write wins.
pub static REWRITE_HEADERS: LazyLock<String> = LazyLock::new(|| {
    format!("UPDATE deliveries SET headers = $3, format = {FORMAT_CLEAR} WHERE id = $1 AND headers = $2")
});
/// Rows of an older format that hold nothing to convert, moved to `FORMAT_CLEAR`:
/// SQLite's `$1` is a JSON array of ids, PostgreSQL's an int8 array.
pub static MARK_FORMAT_SQLITE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE deliveries SET format = {FORMAT_CLEAR} WHERE format < {FORMAT_CLEAR} \
         AND id IN (SELECT value FROM json_each($1))"
    )
});
pub static MARK_FORMAT_POSTGRES: LazyLock<String> = LazyLock::new(|| {
    format!("UPDATE deliveries SET format = {FORMAT_CLEAR} WHERE format < {FORMAT_CLEAR} AND id = ANY($1)")
});

/// A delivery's id, environment and stored headers.
pub type HeadersRow = (i64, String, Vec<u8>);

/// Reads `deliveries_delivered` alone (it holds the environment).
pub const DELIVERED_COUNTS: &str =
    "SELECT environment, COUNT(*) FROM deliveries WHERE status = 'delivered' GROUP BY environment";

impl FinishRow {
    pub fn new(id: DeliveryId, attempt: u32, outcome: &Outcome, made: &AttemptRecord) -> Self {
        let (status, at, http_status, error) = match outcome {
            Outcome::Delivered { at, status } => {
                ("delivered", Some(at.0), Some(i64::from(*status)), None)
            }
            Outcome::Retry { at, error } => ("pending", Some(at.0), None, Some(error.clone())),
            Outcome::Held { at, error } => ("held", Some(at.0), None, Some(error.clone())),
            Outcome::Dead { error } => ("dead", None, None, Some(error.clone())),
        };
        Self {
            id: id.0,
            attempt: i64::from(attempt),
            status,
            at,
            http_status,
            error,
            started_at: made.started_at.0,
            duration_ms: i64::try_from(made.duration.as_millis()).unwrap_or(i64::MAX),
            attempt_status: made.http_status.map(i64::from),
            kind: made.kind.as_str(),
            message: made.message.clone(),
        }
    }

    /// The `$N` values of `RECORD_ATTEMPT`.
    pub fn attempt_values(&self) -> [Value<'_>; 7] {
        [
            Value::Int(self.id),
            Value::Int(self.attempt),
            Value::Int(self.started_at),
            Value::Int(self.duration_ms),
            self.attempt_status.map_or(Value::Null, Value::Int),
            Value::Text(self.kind),
            self.message.as_deref().into(),
        ]
    }

    /// The `$N` values of `finish_one_sql`.
    pub fn values(&self) -> [Value<'_>; 8] {
        let int = |v: Option<i64>| v.map_or(Value::Null, Value::Int);
        [
            Value::Int(self.id),
            Value::Int(self.attempt),
            Value::Text(self.status),
            int(self.at),
            int(self.http_status),
            self.error.as_deref().into(),
            Value::Int(self.started_at),
            Value::Int(self.duration_ms),
        ]
    }

    /// Only attempts that did not deliver get a row of `attempts`; the one
    /// that delivered is kept in the delivery row by the outcome itself.
    pub fn needs_attempt_row(&self) -> bool {
        self.kind != AttemptKind::Delivered.as_str()
    }
}

/// A bound value, so both backends bind the same parameters from one place.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
    /// A NULL where a number stands.
    Null,
    /// A NULL where text stands (PostgreSQL needs to know which).
    NullText,
}

impl From<Option<i64>> for Value<'_> {
    fn from(number: Option<i64>) -> Self {
        number.map_or(Value::Null, Value::Int)
    }
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(text: Option<&'a str>) -> Self {
        text.map_or(Value::NullText, Value::Text)
    }
}

/// An owned bound value, for statements queued to the SQLite writer.
#[derive(Clone, Debug)]
pub enum Param {
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
    NullText,
}

impl Param {
    pub fn as_value(&self) -> Value<'_> {
        match self {
            Param::Int(n) => Value::Int(*n),
            Param::Text(t) => Value::Text(t),
            Param::Blob(b) => Value::Blob(b),
            Param::NullText => Value::NullText,
        }
    }
}

impl From<Option<String>> for Param {
    fn from(text: Option<String>) -> Self {
        text.map_or(Param::NullText, Param::Text)
    }
}

#[derive(sqlx::FromRow)]
pub struct ReplayRow {
    pub(super) id: i64,
    pub(super) environment: String,
    pub(super) received_after: i64,
    pub(super) received_before: i64,
    pub(super) statuses: String,
    pub(super) state: String,
    pub(super) matched: i64,
    pub(super) queued: i64,
    pub(super) created_at: i64,
    pub(super) finished_at: Option<i64>,
    pub(super) actor: String,
}

#[derive(sqlx::FromRow)]
pub struct ControlRow {
    pub(super) environment: String,
    pub(super) paused_at: Option<i64>,
    pub(super) paused_by: Option<String>,
    pub(super) failures: i64,
    pub(super) breaker_opened_at: Option<i64>,
    pub(super) probe_at: Option<i64>,
    pub(super) held_until: Option<i64>,
}

#[derive(sqlx::FromRow)]
pub struct SessionRow {
    pub(super) id: String,
    pub(super) secret_hash: String,
    pub(super) token_hash: String,
    pub(super) peer: Option<String>,
    pub(super) created_at: i64,
    pub(super) expires_at: i64,
    pub(super) ended_at: Option<i64>,
    pub(super) ended_by: Option<String>,
}

/// `$1` id, `$2` the attempt number claimed, `$3` now. Fenced like an
/// outcome, so it never undoes a newer claim or a manual retry.
pub const RELEASE: &str = "UPDATE deliveries SET next_attempt_at = $3, leased_until = NULL, \
     attempts = attempts - 1 WHERE id = $1 AND attempts = $2 AND status = 'pending' \
     AND leased_until IS NOT NULL";

/// What a delivery made pending again (a retry, a replay) is set to: due
/// at `$now`, the whole schedule again (attempts keep counting up, so
/// `X-Relay-Attempt` never repeats), no longer delivered.
macro_rules! requeue_set {
    ($now:literal) => {
        concat!(
            "status = 'pending', next_attempt_at = ",
            $now,
            ", leased_until = NULL, ",
            "attempts_base = attempts, delivered_at = NULL, delivered_attempt = NULL, ",
            "delivered_started_at = NULL, delivered_duration_ms = NULL"
        )
    };
}

/// The attempt that delivered is kept in the delivery row (0006); before a
/// delivery is made pending again it moves to `attempts`, so the attempt
/// that delivers next cannot overwrite it and every attempt stays in the
/// history. Followed by the `requeue_set!` in the same transaction.
macro_rules! keep_delivered_attempt {
    ($where:literal) => {
        concat!(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, http_status, ",
            "outcome, message) SELECT id, delivered_attempt, delivered_started_at, ",
            "COALESCE(delivered_duration_ms, 0), last_status, 'delivered', NULL FROM deliveries ",
            "WHERE delivered_attempt IS NOT NULL AND delivered_started_at IS NOT NULL AND ",
            $where,
            " ON CONFLICT DO NOTHING"
        )
    };
}

/// A manual retry: `$1` id, `$2` now. Not while an attempt is in flight (a
/// live lease): clearing its lease would start a second, overlapping send
/// and fence the first one's outcome out of the history.
pub const RETRY_ONE: &str = concat!(
    "UPDATE deliveries SET ",
    requeue_set!("$2"),
    " WHERE id = $1 AND NOT (status = 'pending' AND leased_until IS NOT NULL AND leased_until > $2)"
);
pub const RETRY_ONE_KEEP: &str = keep_delivered_attempt!(
    "id = $1 AND NOT (status = 'pending' AND leased_until IS NOT NULL AND leased_until > $2)"
);
/// `$1` now, `$2` environment (NULL for both).
pub const RETRY_DEAD: &str = concat!(
    "UPDATE deliveries SET ",
    requeue_set!("$1"),
    " WHERE status = 'dead' AND ($2 IS NULL OR environment = $2)"
);
/// `$1` environment (NULL for both).
pub const RETRY_DEAD_KEEP: &str =
    keep_delivered_attempt!("status = 'dead' AND ($1 IS NULL OR environment = $1)");
/// One delivery a replay reached: `$1` id, `$2` now. The replay's step holds
/// the row (PostgreSQL) or the writer (SQLite) and saw no attempt in flight.
pub const REPLAY_ONE: &str = concat!(
    "UPDATE deliveries SET ",
    requeue_set!("$2"),
    " WHERE id = $1"
);
/// `$1` id.
pub const REPLAY_ONE_KEEP: &str = keep_delivered_attempt!("id = $1");

/// Bounded, so one purge never holds the writer for long. The attempts go
/// first, then their deliveries: both pick the same oldest rows, in the
/// order of `deliveries_delivered`. (Ordered by id, SQLite scanned the whole
/// table to find nothing to purge: a one-second stall of every webhook with
/// a million rows stored, seen in the benchmark.)
pub const PURGE_ATTEMPTS: &str = "DELETE FROM attempts WHERE delivery_id IN \
     (SELECT id FROM deliveries WHERE status = 'delivered' AND received_at < $1 \
     ORDER BY received_at LIMIT $2)";
pub const PURGE_DELIVERED: &str = "DELETE FROM deliveries WHERE id IN \
     (SELECT id FROM deliveries WHERE status = 'delivered' AND received_at < $1 \
     ORDER BY received_at LIMIT $2)";

/// A leased delivery counts as due when its lease runs out.
pub const NEXT_DUE: &str =
    "SELECT MIN(CASE WHEN leased_until IS NOT NULL AND leased_until > next_attempt_at \
     THEN leased_until ELSE next_attempt_at END) FROM deliveries WHERE status = 'pending'";

const DELIVERY_COLUMNS: &str =
    "SELECT id, environment, event_id, event_type, accelerate_token, status, \
     attempts, next_attempt_at, last_error, received_at, delivered_at, payment_id FROM deliveries";

pub fn get_sql() -> String {
    format!("{DELIVERY_COLUMNS} WHERE id = $1")
}

/// A listing with only the conditions its filter has, so each is a range
/// of an index: equality on the event id, token or payment id (a few rows
/// each), else the received-time index of the status asked for (partial,
/// one per status, named literally so the planner can match it) or of
/// every row. Newest first by (received_at, id); the cursor `dlv_N` stands
/// for its row's place in that order, `cursor_at` its `received_at` (read
/// first with `CURSOR_AT`, so the planner sees a value, not a subquery).
/// A cursor whose row is gone (purged) pages on by id alone.
/// The place of a listing's cursor: `$1` its id.
pub const CURSOR_AT: &str = "SELECT received_at FROM deliveries WHERE id = $1";

pub fn list_query(filter: &ListFilter, cursor_at: Option<i64>) -> (String, Vec<Value<'_>>) {
    fn bind<'a>(values: &mut Vec<Value<'a>>, value: Value<'a>) -> String {
        values.push(value);
        format!("${}", values.len())
    }
    let mut values = Vec::new();
    let mut conditions = Vec::new();
    if let Some(status) = filter.status {
        // A fixed word from the enum, never the caller's text.
        conditions.push(format!("status = '{}'", status.as_str()));
    }
    for (column, value) in [
        ("accelerate_token", filter.accelerate_token.as_deref()),
        ("event_id", filter.event_id.as_deref()),
        ("payment_id", filter.payment_id.as_deref()),
        ("environment", filter.environment.map(|e| e.as_str())),
    ] {
        if let Some(value) = value {
            let p = bind(&mut values, Value::Text(value));
            conditions.push(format!("{column} = {p}"));
        }
    }
    if let Some(after) = filter.received_after {
        let p = bind(&mut values, Value::Int(after.0));
        conditions.push(format!("received_at >= {p}"));
    }
    if let Some(before) = filter.received_before {
        let p = bind(&mut values, Value::Int(before.0));
        conditions.push(format!("received_at < {p}"));
    }
    match (filter.before, cursor_at) {
        (Some(cursor), Some(at)) => {
            let id = bind(&mut values, Value::Int(cursor.0));
            let at = bind(&mut values, Value::Int(at));
            conditions.push(format!(
                "received_at <= {at} AND (received_at < {at} OR id < {id})"
            ));
        }
        (Some(cursor), None) => {
            let id = bind(&mut values, Value::Int(cursor.0));
            conditions.push(format!("id < {id}"));
        }
        (None, _) => {}
    }
    let limit = if filter.limit == 0 { 100 } else { filter.limit };
    let p = bind(&mut values, Value::Int(i64::from(limit)));
    let mut sql = DELIVERY_COLUMNS.to_owned();
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY received_at DESC, id DESC LIMIT {p}"));
    (sql, values)
}

#[derive(sqlx::FromRow)]
pub struct AttemptRow {
    pub(super) attempt: i64,
    pub(super) started_at: i64,
    pub(super) duration_ms: i64,
    pub(super) http_status: Option<i64>,
    pub(super) outcome: String,
    pub(super) message: Option<String>,
}

impl From<AttemptRow> for AttemptView {
    fn from(row: AttemptRow) -> Self {
        AttemptView {
            attempt: u32::try_from(row.attempt).unwrap_or(u32::MAX),
            started_at: Timestamp(row.started_at),
            duration_ms: u64::try_from(row.duration_ms).unwrap_or(0),
            http_status: row.http_status.and_then(|s| u16::try_from(s).ok()),
            outcome: AttemptKind::named(&row.outcome),
            message: row.message,
        }
    }
}

#[derive(sqlx::FromRow)]
pub struct ClaimRow {
    pub(super) id: i64,
    pub(super) environment: String,
    pub(super) event_id: String,
    pub(super) body: Vec<u8>,
    pub(super) headers: Vec<u8>,
    pub(super) attempts: i64,
    pub(super) attempts_base: i64,
    pub(super) received_at: i64,
    pub(super) sealed_by: Option<String>,
}

impl ClaimRow {
    /// The claim, its body and headers opened with `keys` when sealed. A
    /// sealed row that does not open is claimed all the same (its attempt
    /// is counted and recorded) but carries why in `unopened` and nothing
    /// to send: it is never forwarded, and stays stored.
    pub(super) fn into_claimed(self, keys: Option<&StoreKeys>) -> Result<Claimed, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(self.id, what.to_owned());
        let environment = stored_environment(self.id, &self.environment)?;
        let attempt = u32::try_from(self.attempts).map_err(|_| corrupt("attempts"))?;
        let schedule_attempt = u32::try_from(self.attempts - self.attempts_base)
            .map_err(|_| corrupt("attempts_base"))?;
        let opened = match self.sealed_by {
            None => Ok((self.body, self.headers)),
            Some(_) => seal::open_row(keys, environment, &self.event_id, &self.body, &self.headers),
        };
        let (body, headers, unopened) = match opened {
            Ok((body, headers)) => (
                Bytes::from(body),
                ForwardHeaders::decode(&headers).ok_or_else(|| corrupt("headers"))?,
                None,
            ),
            Err(e) => (Bytes::new(), ForwardHeaders::default(), Some(e)),
        };
        Ok(Claimed {
            id: DeliveryId(self.id),
            environment,
            headers,
            attempt,
            schedule_attempt,
            received_at: Timestamp(self.received_at),
            event_id: self.event_id,
            body,
            unopened,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct DeliveryRow {
    pub(super) id: i64,
    pub(super) environment: String,
    pub(super) event_id: String,
    pub(super) event_type: String,
    pub(super) accelerate_token: String,
    pub(super) status: String,
    pub(super) attempts: i64,
    pub(super) next_attempt_at: i64,
    pub(super) last_error: Option<String>,
    pub(super) received_at: i64,
    pub(super) delivered_at: Option<i64>,
    pub(super) payment_id: Option<String>,
}

/// The environment row `id` names; one this release cannot name makes the
/// row corrupt, never shown as a guess.
pub(super) fn stored_environment(id: i64, name: &str) -> Result<Environment, StoreError> {
    name.parse()
        .map_err(|e: crate::event::EventError| StoreError::Corrupt(id, e.to_string()))
}

/// A row whose environment or status this release cannot name is corrupt.
impl TryFrom<DeliveryRow> for Delivery {
    type Error = StoreError;
    fn try_from(row: DeliveryRow) -> Result<Self, StoreError> {
        let environment = stored_environment(row.id, &row.environment)?;
        let status: Status = row
            .status
            .parse()
            .map_err(|e| StoreError::Corrupt(row.id, e))?;
        Ok(Delivery {
            id: DeliveryId(row.id),
            environment,
            event_id: row.event_id,
            event_type: row.event_type,
            accelerate_token: redact(&row.accelerate_token),
            status,
            attempts: u32::try_from(row.attempts).unwrap_or(u32::MAX),
            next_attempt_at: (status == Status::Pending).then_some(Timestamp(row.next_attempt_at)),
            last_error: row.last_error,
            received_at: Timestamp(row.received_at),
            delivered_at: row.delivered_at.map(Timestamp),
            payment_id: row.payment_id,
        })
    }
}
