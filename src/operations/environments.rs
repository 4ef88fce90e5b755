//! An operator's view of each environment's delivery controls, and the
//! pause that holds every replica's attempts (`control`).

use serde::Serialize;

use super::{action, Caller, OperationError, Operations};
use crate::event::Environment;
use crate::store::Timestamp;

/// One environment as `GET /admin/environments`, the console and
/// `environments list` show it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EnvironmentView {
    pub environment: Environment,
    pub paused: bool,
    pub paused_at: Option<Timestamp>,
    /// Who paused it: `api`, `cli` or a console session's id.
    pub paused_by: Option<String>,
    /// `closed` or `open`.
    pub breaker: &'static str,
    pub breaker_opened_at: Option<Timestamp>,
    /// Consecutive failed attempts, for the whole fleet.
    pub consecutive_failures: u32,
    /// Accelerate's `Retry-After` holds attempts until then.
    pub held_until: Option<Timestamp>,
    /// Attempts per second for the whole fleet; `None`: unlimited.
    pub rate_per_second: Option<u32>,
    /// Attempts this replica is sending now (`None` from the CLI, which sends none).
    pub in_flight: Option<usize>,
    pub pending: u64,
    pub oldest_pending_age_seconds: Option<u64>,
}

impl Operations {
    pub async fn environments(&self) -> Result<Vec<EnvironmentView>, OperationError> {
        let controls = self.store.controls().await?;
        let gauges = self.store.gauges().await?;
        let now = Timestamp::now();
        Ok(Environment::ALL
            .iter()
            .map(|&env| {
                let control = controls
                    .iter()
                    .find(|(e, _)| *e == env)
                    .map(|(_, c)| c.clone())
                    .unwrap_or_default();
                let gauge = gauges.iter().find(|g| g.environment == env.as_str());
                EnvironmentView {
                    environment: env,
                    paused: control.paused_at.is_some(),
                    paused_at: control.paused_at,
                    paused_by: control.paused_by,
                    breaker: if control.breaker_opened_at.is_some() {
                        "open"
                    } else {
                        "closed"
                    },
                    breaker_opened_at: control.breaker_opened_at,
                    consecutive_failures: control.failures,
                    held_until: control.held_until.filter(|t| *t > now),
                    rate_per_second: self.rate,
                    in_flight: self.gate.as_ref().map(|g| g.in_flight(env)),
                    pending: gauge.map_or(0, |g| g.pending),
                    oldest_pending_age_seconds: gauge
                        .and_then(|g| g.oldest_pending)
                        .map(|t| t.until(now).as_secs()),
                }
            })
            .collect())
    }

    /// Pauses (`paused`) or resumes `env` for the whole fleet; `true` when
    /// it changed something (pausing a paused environment does not).
    pub async fn pause(
        &self,
        who: &Caller,
        env: Environment,
        paused: bool,
    ) -> Result<bool, OperationError> {
        let changed = match &self.gate {
            Some(gate) => gate.pause(env, paused, who.actor.as_str()).await?,
            None if paused => {
                self.store
                    .pause(env, Timestamp::now(), who.actor.as_str())
                    .await?
            }
            None => self.store.resume(env).await?,
        };
        if changed && !paused {
            self.wake();
        }
        let result = match (paused, changed) {
            (true, true) => "paused: no attempt is made until it is resumed",
            (true, false) => "already paused",
            (false, true) => "resumed: held deliveries drain at the paced rate, oldest first",
            (false, false) => "not paused",
        };
        let name = if paused { "pause" } else { "resume" };
        who.audit(action(who, name), env.as_str(), result);
        Ok(changed)
    }
}
