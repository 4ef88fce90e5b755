//! Delivery control as the fleet shares it: one row per environment holding
//! an operator's pause, the breaker, Accelerate's Retry-After and the pace.
//!
//! Every change is one statement on that row, so two replicas never both
//! win a probe, never take the same attempt slot and never disagree on
//! whether an environment is paused for longer than their refresh.

use std::time::Duration;

use super::backend::Backend;
use super::rows::{ControlRow, Param};
use super::{Store, StoreError, Timestamp};
use crate::event::Environment;

const COLUMNS: &str = "SELECT environment, paused_at, paused_by, failures, breaker_opened_at, \
     probe_at, held_until FROM environment_controls ORDER BY environment";
/// `$2` now, `$3` the actor. Pausing a paused environment changes nothing.
const PAUSE: &str = "UPDATE environment_controls SET paused_at = $2, paused_by = $3 \
     WHERE environment = $1 AND paused_at IS NULL";
const RESUME: &str = "UPDATE environment_controls SET paused_at = NULL, paused_by = NULL \
     WHERE environment = $1 AND paused_at IS NOT NULL";
/// One more failed attempt: `$2` now, `$3` failures that open the breaker,
/// `$4` the first probe's time. Answers when the breaker opened (0: closed).
/// (Every right-hand side reads the row as it was.)
const FAILED: &str = "UPDATE environment_controls SET failures = failures + 1, \
     breaker_opened_at = CASE WHEN breaker_opened_at IS NULL AND failures + 1 >= $3 \
     THEN $2 ELSE breaker_opened_at END, \
     probe_at = CASE WHEN breaker_opened_at IS NULL AND failures + 1 >= $3 \
     THEN $4 ELSE probe_at END \
     WHERE environment = $1 RETURNING COALESCE(breaker_opened_at, 0)";
/// An attempt that Accelerate answered: the count starts again, the breaker closes.
const ANSWERED: &str = "UPDATE environment_controls SET failures = 0, \
     breaker_opened_at = NULL, probe_at = NULL \
     WHERE environment = $1 AND (failures > 0 OR breaker_opened_at IS NOT NULL)";
/// The fleet's one probe: `$2` now, `$3` when the next one may go. Only one
/// replica's statement finds `probe_at <= now`; one that dies holding the
/// probe only delays the next by the interval.
const PROBE: &str = "UPDATE environment_controls SET probe_at = $3 \
     WHERE environment = $1 AND breaker_opened_at IS NOT NULL AND probe_at <= $2";
/// `$2` no attempt before then; a later hold is never shortened.
const HOLD: &str = "UPDATE environment_controls SET held_until = $2 \
     WHERE environment = $1 AND (held_until IS NULL OR held_until < $2)";
/// `$2` now (µs), `$3` the slots taken (µs each times their number). Answers
/// the end of the slots taken: they are the `$3` just before it.
const PACE: &str = "UPDATE environment_controls \
     SET pace_us = (CASE WHEN pace_us > $2 THEN pace_us ELSE $2 END) + $3 \
     WHERE environment = $1 RETURNING pace_us";

/// One environment's control row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Control {
    pub paused_at: Option<Timestamp>,
    pub paused_by: Option<String>,
    /// Consecutive failed attempts, for the whole fleet.
    pub failures: u32,
    pub breaker_opened_at: Option<Timestamp>,
    pub probe_at: Option<Timestamp>,
    pub held_until: Option<Timestamp>,
}

impl Store {
    /// Both environments' rows (an environment without a row has none of
    /// the controls set).
    pub async fn controls(&self) -> Result<Vec<(Environment, Control)>, StoreError> {
        let rows = self
            .engine
            .operator_rows::<ControlRow>(COLUMNS.to_owned(), Vec::new())
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let environment = row.environment.parse().ok()?;
                Some((
                    environment,
                    Control {
                        paused_at: row.paused_at.map(Timestamp),
                        paused_by: row.paused_by,
                        failures: u32::try_from(row.failures).unwrap_or(u32::MAX),
                        breaker_opened_at: row.breaker_opened_at.map(Timestamp),
                        probe_at: row.probe_at.map(Timestamp),
                        held_until: row.held_until.map(Timestamp),
                    },
                ))
            })
            .collect())
    }

    /// `true` when this call paused it (`false`: it already was).
    pub async fn pause(
        &self,
        environment: Environment,
        now: Timestamp,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let params = vec![
            env(environment),
            Param::Int(now.0),
            Param::Text(actor.into()),
        ];
        Ok(self.engine.exec(PAUSE, params).await? > 0)
    }

    /// `true` when this call resumed it (`false`: it was not paused).
    pub async fn resume(&self, environment: Environment) -> Result<bool, StoreError> {
        Ok(self.engine.exec(RESUME, vec![env(environment)]).await? > 0)
    }

    /// Counts a failed attempt; `Some(at)` when the breaker is open
    /// (since `at`) once it is counted.
    pub async fn count_failure(
        &self,
        environment: Environment,
        now: Timestamp,
        to_open: u32,
        probe_every: Duration,
    ) -> Result<Option<Timestamp>, StoreError> {
        let params = vec![
            env(environment),
            Param::Int(now.0),
            Param::Int(i64::from(to_open)),
            Param::Int(now.plus(probe_every).0),
        ];
        let opened = self.engine.returning(FAILED, params).await?;
        Ok((opened > 0).then_some(Timestamp(opened)))
    }

    /// `true` when this reset a count or closed the breaker.
    pub async fn count_answered(&self, environment: Environment) -> Result<bool, StoreError> {
        Ok(self.engine.exec(ANSWERED, vec![env(environment)]).await? > 0)
    }

    /// `true` when this replica may send the breaker's next probe now.
    pub async fn take_probe(
        &self,
        environment: Environment,
        now: Timestamp,
        probe_every: Duration,
    ) -> Result<bool, StoreError> {
        let params = vec![
            env(environment),
            Param::Int(now.0),
            Param::Int(now.plus(probe_every).0),
        ];
        Ok(self.engine.exec(PROBE, params).await? > 0)
    }

    pub async fn hold(&self, environment: Environment, until: Timestamp) -> Result<(), StoreError> {
        self.engine
            .exec(HOLD, vec![env(environment), Param::Int(until.0)])
            .await
            .map(|_| ())
    }

    /// Takes `slots` attempt slots `every` apart from the fleet's pace, none
    /// before `now_us`; answers the first one's time (µs since the epoch).
    pub async fn pace(
        &self,
        environment: Environment,
        now_us: i64,
        slots: u32,
        every: Duration,
    ) -> Result<i64, StoreError> {
        let span = i64::from(slots) * i64::try_from(every.as_micros()).unwrap_or(i64::MAX);
        let params = vec![env(environment), Param::Int(now_us), Param::Int(span)];
        Ok(self.engine.returning(PACE, params).await? - span)
    }
}

fn env(environment: Environment) -> Param {
    Param::Text(environment.as_str().to_owned())
}
