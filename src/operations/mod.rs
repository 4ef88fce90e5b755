//! What operators do to deliveries, written once: the admin API, the console
//! and the CLI parse their input into these calls and render what comes
//! back. Each action here is checked, done on the store, audited and (in the
//! relay) wakes the delivery worker exactly once, whoever asked.

mod environments;
mod replays;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

pub use environments::EnvironmentView;
pub use replays::run as run_replays;

use crate::control::Gate;
use crate::event::Environment;
use crate::store::{
    DeliveryDetail, DeliveryId, ListFilter, Replay, ReplayId, ReplayRequest, ReplayState, Retried,
    Status, Store, StoreError, Timestamp,
};

/// Who acts, for the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    Api,
    Cli,
    /// A console session, by its id.
    Console(String),
}

impl Actor {
    pub fn as_str(&self) -> &str {
        match self {
            Actor::Api => "api",
            Actor::Cli => "cli",
            Actor::Console(session) => session,
        }
    }
}

/// An actor and where the request came from (none for the CLI).
#[derive(Clone, Debug)]
pub struct Caller {
    pub actor: Actor,
    pub peer: Option<IpAddr>,
    /// The request's path, when it came over HTTP.
    pub path: Option<String>,
}

impl Caller {
    pub fn cli() -> Self {
        Self {
            actor: Actor::Cli,
            peer: None,
            path: None,
        }
    }

    /// One line per action, for the audit trail: who acted, what was done,
    /// to what (`subject`: a delivery, a replay, an environment, a
    /// session), with what result, from which address. Field names no log
    /// line already has (`target` is the logger's own), so a JSON reader
    /// keeps every one.
    pub fn audit(&self, action: &str, subject: &str, result: &str) {
        tracing::info!(
            audit = true,
            actor = self.actor.as_str(),
            action,
            subject,
            result,
            path = self.path.as_deref(),
            peer = self.peer.map(tracing::field::display),
            "admin action"
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("no {0}")]
    NotFound(String),
    /// Refused: an attempt of the delivery is being sent now.
    #[error("{0}")]
    InFlight(String),
    /// Refused: the replay has already ended.
    #[error("{0}")]
    Ended(String),
    #[error("the store did not answer: {0}")]
    Store(#[from] StoreError),
}

/// The operations over one store; `wake` tells the relay's delivery worker
/// that something is due now (the CLI has none: the running relay finds it
/// at its next look at the store).
#[derive(Clone)]
pub struct Operations {
    store: Store,
    wake: Option<Arc<Notify>>,
    retention: Duration,
    /// The relay's delivery controls (the CLI has none: it changes the
    /// store, and every relay obeys within a second).
    gate: Option<Arc<Gate>>,
    /// `RELAY_DELIVERY_RATE`, to show.
    rate: Option<u32>,
}

impl Operations {
    pub fn new(store: Store, wake: Option<Arc<Notify>>, retention: Duration) -> Self {
        Self {
            store,
            wake,
            retention,
            gate: None,
            rate: None,
        }
    }

    /// Pauses and resumes through the relay's own controls, obeyed here at once.
    pub fn with_gate(mut self, gate: Arc<Gate>) -> Self {
        self.rate = gate.rate();
        self.gate = Some(gate);
        self
    }

    /// The rate shown where there is no gate (the CLI).
    pub fn with_rate(mut self, rate: Option<u32>) -> Self {
        self.rate = rate;
        self
    }

    fn wake(&self) {
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
    }

    pub async fn list(
        &self,
        who: &Caller,
        filter: &ListFilter,
    ) -> Result<Vec<crate::store::Delivery>, OperationError> {
        let found = self.store.list(filter).await?;
        who.audit("list", "deliveries", &format!("{} listed", found.len()));
        Ok(found)
    }

    pub async fn detail(
        &self,
        who: &Caller,
        id: DeliveryId,
    ) -> Result<DeliveryDetail, OperationError> {
        let detail = self.store.detail(id).await?;
        let result = if detail.is_some() {
            "shown"
        } else {
            "not found"
        };
        who.audit("show", &id.to_string(), result);
        detail.ok_or_else(|| OperationError::NotFound(format!("delivery {id}")))
    }

    /// A manual retry: the delivery pending and due now with the whole
    /// schedule again; refused (409) while an attempt is in flight, so it
    /// never starts a second send beside the first.
    pub async fn retry(&self, who: &Caller, id: DeliveryId) -> Result<(), OperationError> {
        let retried = self.store.retry(id, Timestamp::now()).await?;
        let result = match &retried {
            Retried::Due => {
                self.wake();
                "pending, due now"
            }
            Retried::NotFound => "not found",
            Retried::InFlight { .. } => "refused: an attempt is in flight",
        };
        who.audit(action(who, "retry"), &id.to_string(), result);
        match retried {
            Retried::Due => Ok(()),
            Retried::NotFound => Err(OperationError::NotFound(format!("delivery {id}"))),
            Retried::InFlight { lease_ends } => Err(OperationError::InFlight(format!(
                "{id}: an attempt is being sent to Accelerate now (its lease ends at {} at the \
                 latest); its outcome will be in the history. Retry after it, if it failed.",
                lease_ends.map_or("its lease's end".to_owned(), |t| t.to_string())
            ))),
        }
    }

    /// Every dead delivery (of `environment`, or of both) retried as `retry` does one.
    pub async fn retry_dead(
        &self,
        who: &Caller,
        environment: Option<Environment>,
    ) -> Result<u64, OperationError> {
        let retried = self.store.retry_dead(Timestamp::now(), environment).await?;
        if retried > 0 {
            self.wake();
        }
        who.audit(
            action(who, "retry-dead"),
            environment.map_or("all environments", Environment::as_str),
            &format!("{retried} pending, due now"),
        );
        Ok(retried)
    }

    /// How many deliveries a replay of `request` would send now.
    pub async fn preview_replay(&self, request: &ReplayRequest) -> Result<u64, OperationError> {
        Ok(self.store.count_replayable(request).await?)
    }

    /// Records a replay; the replay runner (on any replica) sends it.
    pub async fn start_replay(
        &self,
        who: &Caller,
        request: &ReplayRequest,
    ) -> Result<Replay, OperationError> {
        let now = Timestamp::now();
        let matched = self.store.count_replayable(request).await?;
        let id = self
            .store
            .create_replay(request, matched, who.actor.as_str(), now)
            .await?;
        who.audit(
            action(who, "replay"),
            &id.to_string(),
            &format!(
                "running: {matched} matched in {} received {} to {}",
                request.environment, request.received_after, request.received_before
            ),
        );
        self.replay(id).await
    }

    pub async fn replay(&self, id: ReplayId) -> Result<Replay, OperationError> {
        self.store
            .replay(id)
            .await?
            .ok_or_else(|| OperationError::NotFound(format!("replay {id}")))
    }

    pub async fn replays(&self) -> Result<Vec<Replay>, OperationError> {
        Ok(self.store.replays().await?)
    }

    /// Stops a running replay before its next step; what it already made
    /// due is sent, nothing more is.
    pub async fn cancel_replay(
        &self,
        who: &Caller,
        id: ReplayId,
    ) -> Result<Replay, OperationError> {
        let cancelled = self.store.cancel_replay(id, Timestamp::now()).await?;
        let replay = self.store.replay(id).await?;
        let result = match (&replay, cancelled) {
            (None, _) => "not found".to_owned(),
            (Some(r), true) => format!("cancelled after {} queued", r.queued),
            (Some(r), false) => format!("refused: already {}", r.state.as_str()),
        };
        who.audit(action(who, "cancel-replay"), &id.to_string(), &result);
        let replay = replay.ok_or_else(|| OperationError::NotFound(format!("replay {id}")))?;
        if !cancelled {
            return Err(OperationError::Ended(format!(
                "{id} is already {}; only a running replay can be cancelled",
                replay.state.as_str()
            )));
        }
        debug_assert_eq!(replay.state, ReplayState::Cancelled);
        Ok(replay)
    }

    /// Before this instant delivered events are purged (`RELAY_RETENTION_HOURS`):
    /// a replay cannot send them again.
    pub fn retained_since(&self) -> Timestamp {
        Timestamp::now().minus(self.retention)
    }
}

/// The console's actions are audited under names of their own.
fn action(who: &Caller, action: &'static str) -> &'static str {
    match (&who.actor, action) {
        (Actor::Console(_), "retry") => "console-retry",
        (Actor::Console(_), "retry-dead") => "console-retry-dead",
        (Actor::Console(_), "replay") => "console-replay",
        (Actor::Console(_), "cancel-replay") => "console-cancel-replay",
        (Actor::Console(_), "pause") => "console-pause",
        (Actor::Console(_), "resume") => "console-resume",
        _ => action,
    }
}

/// A replay as an operator writes it, from the admin API's JSON, the
/// console's form or the CLI's flags alike. `now` bounds `received_before`:
/// a replay never reaches events that arrive after it was asked for.
pub fn replay_request(
    environment: &str,
    received_after: &str,
    received_before: &str,
    statuses: &[&str],
    now: Timestamp,
) -> Result<ReplayRequest, String> {
    let environment: Environment = environment
        .parse()
        .map_err(|e| format!("environment: {e}"))?;
    let after = crate::store::parse_utc("received_after", received_after)?;
    let before = crate::store::parse_utc("received_before", received_before)?;
    if after >= before {
        return Err(format!(
            "received_after ({after}) must be before received_before ({before})"
        ));
    }
    if after >= now {
        return Err(format!(
            "received_after ({after}) is in the future: nothing was received then"
        ));
    }
    if statuses.is_empty() {
        return Err(
            "statuses: name at least one of pending, delivered, dead (e.g. [\"delivered\", \"dead\"])"
                .to_owned(),
        );
    }
    let mut parsed: Vec<Status> = Vec::new();
    for status in statuses {
        let status: Status = status.parse().map_err(|e| format!("statuses: {e}"))?;
        if parsed.contains(&status) {
            return Err(format!(
                "statuses: `{}` given more than once; give it once",
                status.as_str()
            ));
        }
        parsed.push(status);
    }
    Ok(ReplayRequest {
        environment,
        received_after: after,
        received_before: before.min(now),
        statuses: parsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_800_000_000_000);

    #[test]
    fn a_replay_request_is_parsed_strictly() {
        let ok = replay_request(
            "sandbox",
            "2026-01-01T00:00:00Z",
            "2026-01-02T00:00:00Z",
            &["delivered", "dead"],
            NOW,
        )
        .unwrap();
        assert_eq!(ok.statuses, vec![Status::Delivered, Status::Dead]);
        let bad =
            |e: &str, a: &str, b: &str, s: &[&str]| replay_request(e, a, b, s, NOW).unwrap_err();
        let (a, b) = ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z");
        assert!(bad("prod", a, b, &["dead"]).starts_with("environment:"));
        assert!(bad("sandbox", "yesterday", b, &["dead"]).starts_with("received_after:"));
        assert!(bad("sandbox", b, a, &["dead"]).contains("must be before"));
        assert!(bad("sandbox", a, b, &[]).starts_with("statuses:"));
        assert!(bad("sandbox", a, b, &["dead", "dead"]).contains("more than once"));
        assert!(bad("sandbox", a, b, &["failed"]).starts_with("statuses:"));
    }

    #[test]
    fn a_replay_never_reaches_past_the_moment_it_was_asked_for() {
        let r = replay_request(
            "production",
            "2026-01-01T00:00:00Z",
            "2099-01-01T00:00:00Z",
            &["pending"],
            NOW,
        )
        .unwrap();
        assert_eq!(r.received_before, NOW);
    }
}
