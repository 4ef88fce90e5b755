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
use crate::metrics::Metrics;
use crate::store::{Schema, Store, StoreError};

/// How often the schema is looked at and older rows are swept: the bound on
/// how long a newer migration goes unseen, and on how long a row an older
/// replica wrote keeps a key in clear (plus the sweep's own time).
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Most rows sealed (or moved to a new store key) per sweep: 1,000 a second,
/// so converting or rotating a large store never crowds out the webhooks.
pub const SEAL_PER_ROUND: u64 = 2_000;

/// Whether the database has moved past this release.
#[derive(Default)]
pub struct Fence {
    /// Read on every claim and hand-over: an atomic beside the schema it
    /// was decided from, so the hot path takes no lock.
    newer: AtomicBool,
    schema: Mutex<Option<Schema>>,
    /// The warning about rows left in an older format was given.
    warned_left: AtomicBool,
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

    /// Every `CHECK_EVERY` looks at the schema and sweeps, until `stop`
    /// (the first sweep is `Application::build`'s, before the first claim).
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        config: Arc<Config>,
        metrics: Option<Arc<Metrics>>,
        mut stop: watch::Receiver<bool>,
    ) {
        while !*stop.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.changed() => continue,
            }
            match store.schema().await {
                Ok(schema) => self.saw(schema),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the schema version; looking again soon")
                }
            }
            if !self.closed() {
                if let Err(e) = self.sweep(&store, &config, metrics.as_deref()).await {
                    tracing::warn!(error = %e, "could not convert older stored rows; trying again soon");
                }
            }
        }
    }

    /// Converts the rows of an older format the configured keys allow and,
    /// with `RELAY_STORE_KEY`, seals up to `SEAL_PER_ROUND` rows not yet
    /// sealed with its first key. Rows of an environment with no keys now
    /// are warned about once, until they are converted.
    pub async fn sweep(
        &self,
        store: &Store,
        config: &Config,
        metrics: Option<&Metrics>,
    ) -> Result<(), StoreError> {
        let credentials = |env| config.credentials(env);
        let (converted, left) = match store.keys() {
            Some(keys) => {
                let round = store.seal_round(keys, credentials, SEAL_PER_ROUND).await?;
                if round.sealed > 0 {
                    tracing::info!(
                        sealed = round.sealed,
                        left = round.left,
                        key = %keys.current(),
                        "stored bodies and headers sealed with the first RELAY_STORE_KEY"
                    );
                }
                if let Some(metrics) = metrics {
                    metrics.sealing(round.sealed, round.left);
                }
                (0, round.waiting_for_credentials)
            }
            None => store.convert_old_formats(credentials).await?,
        };
        if converted > 0 {
            tracing::info!(
                converted,
                "stored Authorization values replaced by references to the configured keys"
            );
        }
        if left > 0 && !self.warned_left.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                left,
                "deliveries of an environment with no keys configured still hold the Authorization \
                 value they arrived with; set that environment's keys to convert them"
            );
        } else if left == 0 {
            self.warned_left.store(false, Ordering::Release);
        }
        Ok(())
    }
}
