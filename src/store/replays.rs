//! Replays by time range: every delivery of one environment received between
//! two instants, in the statuses asked for, made pending and due again, a
//! step at a time, oldest first.
//!
//! A replay is a row, so a restart resumes it and, on PostgreSQL, any replica
//! carries it on. Each step runs in one transaction that holds the replay
//! (and, on PostgreSQL, the deliveries it reaches), so two replicas never
//! take the same step, and `next_step_at` paces the fleet, not each replica.

use std::fmt;
use std::str::FromStr;

use super::backend::Backend;
use super::rows::{Param, ReplayRow};
use super::{Status, Store, StoreError, Timestamp};
use crate::event::Environment;

/// Deliveries one step makes due, and how long before the next step: a
/// replay sends at most `STEP_SIZE` events per `STEP_EVERY` for the whole
/// fleet, so a replay of a day's events does not arrive at Accelerate as
/// one burst.
pub const STEP_SIZE: u32 = 200;
pub const STEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Most replays one listing shows.
pub const LIST_LIMIT: i64 = 100;

const COLUMNS: &str = "SELECT id, environment, received_after, received_before, statuses, \
     state, matched, queued, created_at, finished_at, actor FROM replays";
const INSERT: &str = "INSERT INTO replays (environment, received_after, received_before, \
     statuses, matched, cursor_at, next_step_at, created_at, actor) \
     VALUES ($1, $2, $3, $4, $5, $2, $6, $6, $7) RETURNING id";
/// `$2` now. Only a running replay is cancelled; a finished one stays as it ended.
const CANCEL: &str = "UPDATE replays SET state = 'cancelled', finished_at = $2 \
     WHERE id = $1 AND state = 'running'";
/// The running replays and when each takes its next step.
pub(super) const RUNNING: &str =
    "SELECT id, next_step_at FROM replays WHERE state = 'running' ORDER BY next_step_at";
/// The replay a step works on: `$1` id, `$2` now; nothing when it is not
/// running or not due (another replica took this step).
pub(super) const STEP_REPLAY: &str = "SELECT environment, received_after, received_before, \
     statuses, cursor_at, cursor_id FROM replays WHERE id = $1 AND state = 'running' \
     AND next_step_at <= $2";
/// The next deliveries of a replay, oldest first from its cursor, with
/// whether an attempt is in flight: `$1` now, `$2` environment, `$3`
/// received after, `$4` before, `$5`/`$6` the cursor, `$7`-`$9` 1 for each
/// status replayed (pending, delivered, dead), `$10` the step's size.
pub(super) const STEP_DELIVERIES: &str = "SELECT id, received_at, \
     CAST(CASE WHEN status = 'pending' AND leased_until IS NOT NULL AND leased_until > $1 \
     THEN 1 ELSE 0 END AS BIGINT) FROM deliveries WHERE environment = $2 \
     AND received_at >= $3 AND received_at < $4 AND (received_at, id) > ($5, $6) \
     AND ((status = 'pending' AND $7 = 1) OR (status = 'delivered' AND $8 = 1) \
     OR (status = 'dead' AND $9 = 1)) ORDER BY received_at, id LIMIT $10";
/// Counts what a replay would match (`$1`–`$4`, `$7`–`$9` of `STEP_DELIVERIES`).
const MATCHING: &str = "SELECT COUNT(*) FROM deliveries WHERE environment = $1 \
     AND received_at >= $2 AND received_at < $3 \
     AND ((status = 'pending' AND $4 = 1) OR (status = 'delivered' AND $5 = 1) \
     OR (status = 'dead' AND $6 = 1))";
/// Where a step left the replay: `$1` id, `$2`/`$3` cursor, `$4` queued in
/// this step, `$5` next step at, `$6` 'done' or 'running', `$7` now.
pub(super) const STEP_DONE: &str = "UPDATE replays SET cursor_at = $2, cursor_id = $3, \
     queued = queued + $4, next_step_at = $5, state = $6, \
     finished_at = CASE WHEN $6 = 'done' THEN $7 ELSE finished_at END \
     WHERE id = $1 AND state = 'running'";

/// A replay's public id, `rpl_<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplayId(pub i64);

serialize_as_display!(ReplayId);

impl fmt::Display for ReplayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::write_public_id(f, "rpl_", self.0)
    }
}

/// Only the spelling the relay prints, as for `DeliveryId`.
impl FromStr for ReplayId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        super::canonical_id(s, "rpl_")
            .map(ReplayId)
            .ok_or_else(|| format!("`{s}` is not a replay id (rpl_ and a number, e.g. rpl_3)"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayState {
    Running,
    Done,
    Cancelled,
}

impl ReplayState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayState::Running => "running",
            ReplayState::Done => "done",
            ReplayState::Cancelled => "cancelled",
        }
    }
}

/// What an operator asked to send again. `received_before` never lies after
/// the request was made: events still arriving are not replayed as they come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRequest {
    pub environment: Environment,
    pub received_after: Timestamp,
    pub received_before: Timestamp,
    /// Not empty, each once.
    pub statuses: Vec<Status>,
}

impl ReplayRequest {
    /// 1 for each status replayed, 0 for the others: pending, delivered, dead.
    fn flags(&self) -> [Param; 3] {
        [Status::Pending, Status::Delivered, Status::Dead]
            .map(|s| Param::Int(i64::from(self.statuses.contains(&s))))
    }

    fn statuses_text(&self) -> String {
        let names: Vec<&str> = self.statuses.iter().map(|s| s.as_str()).collect();
        names.join(",")
    }
}

/// A replay as operators see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    pub id: ReplayId,
    pub request: ReplayRequest,
    pub state: ReplayState,
    pub matched: u64,
    pub queued: u64,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// `api`, `cli` or the console session that made it.
    pub actor: String,
}

impl serde::Serialize for Replay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("Replay", 10)?;
        out.serialize_field("id", &self.id)?;
        out.serialize_field("environment", &self.request.environment)?;
        out.serialize_field("received_after", &self.request.received_after)?;
        out.serialize_field("received_before", &self.request.received_before)?;
        out.serialize_field("statuses", &self.request.statuses)?;
        out.serialize_field("state", &self.state)?;
        out.serialize_field("matched", &self.matched)?;
        out.serialize_field("queued", &self.queued)?;
        out.serialize_field("created_at", &self.created_at)?;
        out.serialize_field("finished_at", &self.finished_at)?;
        out.end()
    }
}

impl TryFrom<ReplayRow> for Replay {
    type Error = StoreError;
    fn try_from(row: ReplayRow) -> Result<Self, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(row.id, what);
        let environment = super::rows::stored_environment(row.id, &row.environment)?;
        let statuses = row
            .statuses
            .split(',')
            .map(|s| s.parse::<Status>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        let state = match row.state.as_str() {
            "running" => ReplayState::Running,
            "done" => ReplayState::Done,
            "cancelled" => ReplayState::Cancelled,
            other => return Err(corrupt(format!("replay state `{other}`"))),
        };
        Ok(Replay {
            id: ReplayId(row.id),
            request: ReplayRequest {
                environment,
                received_after: Timestamp(row.received_after),
                received_before: Timestamp(row.received_before),
                statuses,
            },
            state,
            matched: u64::try_from(row.matched).unwrap_or(0),
            queued: u64::try_from(row.queued).unwrap_or(0),
            created_at: Timestamp(row.created_at),
            finished_at: row.finished_at.map(Timestamp),
            actor: row.actor,
        })
    }
}

/// One delivery a step reached.
#[derive(Clone, Copy, Debug)]
pub(super) struct Candidate {
    pub id: i64,
    pub received_at: i64,
    pub in_flight: bool,
}

/// What a step does with the deliveries it read: make due those before the
/// first with an attempt in flight (that one waits for its attempt to end,
/// so an event never has two attempts in flight), and move the cursor past
/// them. The replay is done when the step read fewer than it asked for and
/// none of them waits.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StepPlan {
    pub queue: Vec<i64>,
    pub cursor: Option<(i64, i64)>,
    pub done: bool,
}

pub(super) fn plan_step(found: &[Candidate], asked: u32) -> StepPlan {
    let ready = found.iter().take_while(|c| !c.in_flight).count();
    let queue: Vec<i64> = found[..ready].iter().map(|c| c.id).collect();
    let cursor = found[..ready].last().map(|c| (c.received_at, c.id));
    let done = ready == found.len() && found.len() < asked as usize;
    StepPlan {
        queue,
        cursor,
        done,
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stepped {
    pub queued: u64,
    pub done: bool,
}

impl Store {
    /// How many deliveries `request` matches now.
    pub async fn count_replayable(&self, request: &ReplayRequest) -> Result<u64, StoreError> {
        let [p, d, x] = request.flags();
        let params = vec![
            Param::Text(request.environment.as_str().to_owned()),
            Param::Int(request.received_after.0),
            Param::Int(request.received_before.0),
            p,
            d,
            x,
        ];
        self.count(MATCHING, params).await
    }

    /// Records a replay, running from now; `matched` is what it matched when made.
    pub async fn create_replay(
        &self,
        request: &ReplayRequest,
        matched: u64,
        actor: &str,
        now: Timestamp,
    ) -> Result<ReplayId, StoreError> {
        let params = vec![
            Param::Text(request.environment.as_str().to_owned()),
            Param::Int(request.received_after.0),
            Param::Int(request.received_before.0),
            Param::Text(request.statuses_text()),
            Param::Int(i64::try_from(matched).unwrap_or(i64::MAX)),
            Param::Int(now.0),
            Param::Text(actor.to_owned()),
        ];
        let id = self.engine.insert_returning(INSERT, params).await?;
        Ok(ReplayId(id))
    }

    pub async fn replay(&self, id: ReplayId) -> Result<Option<Replay>, StoreError> {
        let sql = format!("{COLUMNS} WHERE id = $1");
        Ok(self
            .replays_where(sql, vec![Param::Int(id.0)])
            .await?
            .into_iter()
            .next())
    }

    /// The latest replays, newest first.
    pub async fn replays(&self) -> Result<Vec<Replay>, StoreError> {
        let sql = format!("{COLUMNS} ORDER BY id DESC LIMIT {LIST_LIMIT}");
        self.replays_where(sql, Vec::new()).await
    }

    /// Stops a running replay before its next step: what it already made
    /// due is sent, nothing more. `false` when it was not running.
    pub async fn cancel_replay(&self, id: ReplayId, now: Timestamp) -> Result<bool, StoreError> {
        let params = vec![Param::Int(id.0), Param::Int(now.0)];
        Ok(self.engine.exec(CANCEL, params).await? > 0)
    }

    /// The running replays, each with the time of its next step.
    pub async fn running_replays(&self) -> Result<Vec<(ReplayId, Timestamp)>, StoreError> {
        let found = self.engine.pairs(RUNNING).await?;
        Ok(found
            .into_iter()
            .map(|(id, at)| (ReplayId(id), Timestamp(at)))
            .collect())
    }

    /// One step of a replay, if it is running and due (else nothing happens).
    pub async fn replay_step(&self, id: ReplayId, now: Timestamp) -> Result<Stepped, StoreError> {
        self.engine.replay_step(id, now).await
    }

    async fn replays_where(
        &self,
        sql: String,
        params: Vec<Param>,
    ) -> Result<Vec<Replay>, StoreError> {
        let rows = self.engine.operator_rows::<ReplayRow>(sql, params).await?;
        rows.into_iter().map(Replay::try_from).collect()
    }
}

/// The replay a step works on, as read inside its transaction.
pub(super) struct StepReplay {
    pub environment: String,
    pub received_after: i64,
    pub received_before: i64,
    pub statuses: String,
    pub cursor_at: i64,
    pub cursor_id: i64,
}

impl StepReplay {
    /// `STEP_DELIVERIES`'s values.
    pub fn params(&self, now: Timestamp) -> Vec<Param> {
        let has = |s: &str| Param::Int(i64::from(self.statuses.split(',').any(|x| x == s)));
        vec![
            Param::Int(now.0),
            Param::Text(self.environment.clone()),
            Param::Int(self.received_after),
            Param::Int(self.received_before),
            Param::Int(self.cursor_at),
            Param::Int(self.cursor_id),
            has("pending"),
            has("delivered"),
            has("dead"),
            Param::Int(i64::from(STEP_SIZE)),
        ]
    }

    /// `STEP_DONE`'s values after `plan`.
    pub fn done_params(&self, id: ReplayId, plan: &StepPlan, now: Timestamp) -> Vec<Param> {
        let (at, last) = plan.cursor.unwrap_or((self.cursor_at, self.cursor_id));
        vec![
            Param::Int(id.0),
            Param::Int(at),
            Param::Int(last),
            Param::Int(plan.queue.len() as i64),
            Param::Int(now.plus(STEP_EVERY).0),
            Param::Text(if plan.done { "done" } else { "running" }.to_owned()),
            Param::Int(now.0),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: i64, in_flight: bool) -> Candidate {
        Candidate {
            id,
            received_at: id * 10,
            in_flight,
        }
    }

    #[test]
    fn a_step_stops_before_an_attempt_in_flight() {
        let plan = plan_step(&[c(1, false), c(2, true), c(3, false)], 3);
        assert_eq!(plan.queue, vec![1]);
        assert_eq!(plan.cursor, Some((10, 1)));
        assert!(!plan.done);
    }

    #[test]
    fn a_short_step_with_nothing_in_flight_ends_the_replay() {
        let plan = plan_step(&[c(1, false), c(2, false)], 3);
        assert_eq!(plan.queue, vec![1, 2]);
        assert!(plan.done);
        assert!(!plan_step(&[c(1, false), c(2, false), c(3, false)], 3).done);
        assert!(plan_step(&[], 3).done);
        // Waiting on the first: nothing moves, not done.
        let waiting = plan_step(&[c(1, true)], 3);
        assert_eq!(
            (waiting.queue.len(), waiting.cursor, waiting.done),
            (0, None, false)
        );
    }

    #[test]
    fn replay_ids_have_one_spelling() {
        assert_eq!("rpl_7".parse(), Ok(ReplayId(7)));
        for bad in ["rpl_07", "rpl_+7", "7", "rpl_", "rpl_0", "dlv_7", "rpl_7 "] {
            assert!(bad.parse::<ReplayId>().is_err(), "{bad}");
        }
    }
}
