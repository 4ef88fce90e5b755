//! The replay runner: every replica takes the steps of the running replays
//! that are due. The store makes each step one transaction and paces them
//! for the fleet (`store::STEP_EVERY`), so two replicas running this never
//! queue an event twice or faster than one replica would.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::store::{Store, Timestamp, STEP_EVERY};

/// Longest sleep between two looks at the replays: how late a replay made
/// on another replica (or by the CLI) starts, and what an idle relay spends
/// on them (one small query a second).
const IDLE: Duration = STEP_EVERY;

pub async fn run(store: Store, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        let mut wait = IDLE;
        match store.running_replays().await {
            Ok(running) => {
                for (id, at) in running {
                    let now = Timestamp::now();
                    if at > now {
                        wait = wait.min(now.until(at));
                        continue;
                    }
                    match store.replay_step(id, now).await {
                        Ok(stepped) => {
                            if stepped.queued > 0 {
                                wake.notify_one();
                            }
                            if stepped.done {
                                tracing::info!(replay = %id, "replay done: every matching delivery was made due");
                            } else {
                                wait = wait.min(STEP_EVERY);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(replay = %id, error = %e, "a replay step failed; it is taken again at the next")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the running replays; will try again")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            _ = stop.changed() => return,
        }
    }
}
