//! The replay runner: every replica takes the steps of the running replays
//! that are due. The store makes each step one transaction and paces them
//! for the fleet (`store::STEP_EVERY`), so two replicas running this never
//! queue an event twice or faster than one replica would.

use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::store::{Store, Timestamp, STEP_EVERY};

pub async fn run(store: Store, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        match store.due_replays(Timestamp::now()).await {
            Ok(due) => {
                for id in due {
                    match store.replay_step(id, Timestamp::now()).await {
                        Ok(stepped) => {
                            if stepped.queued > 0 {
                                wake.notify_one();
                            }
                            if stepped.done {
                                tracing::info!(replay = %id, "replay done: every matching delivery was made due");
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
            _ = tokio::time::sleep(STEP_EVERY / 4) => {}
            _ = stop.changed() => return,
        }
    }
}
