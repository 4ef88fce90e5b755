//! Delivered events hold card holder data: they are deleted once older than
//! `RELAY_RETENTION_HOURS`. Their ids go with them, so the retention is also
//! how long resends are recognised as duplicates (7 days by default, longer
//! than Checkout.com's ~30 hours of retries).

use std::time::Duration;

use tokio::sync::watch;

use crate::store::{Store, Timestamp};

const EVERY: Duration = Duration::from_secs(600);

pub async fn run(store: Store, retention: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        match store
            .purge_delivered(Timestamp::now().minus(retention))
            .await
        {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged delivered events past retention"),
            Err(e) => {
                tracing::warn!(error = %e, "could not purge delivered events; will try again")
            }
        }
        // Console sessions are kept as long past their expiry, for the audit.
        if let Err(e) = store
            .purge_sessions(Timestamp::now().minus(retention))
            .await
        {
            tracing::warn!(error = %e, "could not purge expired console sessions; will try again");
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}
