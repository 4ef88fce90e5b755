//! The upgrade fence. During a rolling upgrade an older and a newer replica
//! serve one database: the older one must never send what the newer one
//! stored in a format it does not know, and the newer one must convert what
//! the older one keeps writing.
//!
//! Three parts: each row records its store format and a claim takes only
//! formats this release knows (`store::FORMAT`, in the claim itself); a
//! replica that sees a newer migration appear stops claiming altogether and
//! reports itself not ready (`Fence`, read by the delivery controls and
//! `/readyz`); and rows of an older format are converted by a sweep every
//! `CHECK_EVERY`, for as long as the replica runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::store::{Schema, Store, StoreError};

/// How often the schema is looked at and older rows are swept: the bound on
/// how long a newer migration goes unseen, and on how long a row an older
/// replica wrote keeps a key in clear (plus the sweep's own time).
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Whether the database has moved past this release.
#[derive(Default)]
pub struct Fence {
    newer: AtomicBool,
    schema: Mutex<Option<Schema>>,
}

impl Fence {
    /// True once a newer release's migration is in the database: no claim,
    /// no hand-over, no attempt from this replica.
    pub fn closed(&self) -> bool {
        self.newer.load(Ordering::Acquire)
    }

    /// What `/readyz` says while closed.
    pub fn reason(&self) -> Option<String> {
        if !self.closed() {
            return None;
        }
        let schema = *self.schema.lock().unwrap_or_else(|p| p.into_inner());
        schema.map(|s| {
            format!(
                "the database schema is version {}, newer than this release knows ({}): \
                 a newer release is rolling out; this replica no longer delivers and \
                 should be replaced by it",
                s.found, s.known
            )
        })
    }

    /// Records what was read; logs at `error` when the fence closes.
    fn saw(&self, schema: Schema) {
        *self.schema.lock().unwrap_or_else(|p| p.into_inner()) = Some(schema);
        let newer = schema.is_newer();
        if self.newer.swap(newer, Ordering::AcqRel) != newer && newer {
            tracing::error!(
                found = schema.found,
                known = schema.known,
                "the database schema is newer than this release knows: a newer release \
                 migrated it; this replica stops delivering and answers /readyz 503 until \
                 it is replaced by the newer release"
            );
        }
    }

    /// Looks at the schema and sweeps older rows every `CHECK_EVERY` until
    /// `stop`.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        config: Arc<Config>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut warned_left = false;
        while !*stop.borrow() {
            match store.schema().await {
                Ok(schema) => self.saw(schema),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the schema version; looking again soon")
                }
            }
            if !self.closed() {
                match sweep(&store, &config, !warned_left).await {
                    Ok(left) => warned_left = left > 0,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not convert older stored rows; trying again soon")
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Converts every row of an older format the configured keys allow;
/// returns how many are left (their environment has no keys now). A warning
/// about those is logged when `warn_left`.
pub async fn sweep(store: &Store, config: &Config, warn_left: bool) -> Result<u64, StoreError> {
    let (converted, left) = store
        .convert_old_formats(|env| config.credentials(env))
        .await?;
    if converted > 0 {
        tracing::info!(
            converted,
            "stored Authorization values replaced by references to the configured keys"
        );
    }
    if left > 0 && warn_left {
        tracing::warn!(
            left,
            "deliveries of an environment with no keys configured still hold the Authorization \
             value they arrived with; set that environment's keys to convert them"
        );
    }
    Ok(left)
}
