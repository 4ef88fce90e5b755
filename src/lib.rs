//! accelerate-relay: receives Checkout.com payment webhooks, keeps the approved
//! and declined ones that carry an `AccelerateToken`, stores them durably and
//! forwards them byte for byte to Accelerate.
//!
//! ```text
//! Checkout.com ─▶ http::webhook ─▶ verify ─▶ event ─▶ store.accept ─▶ 200
//! Accelerate   ◀─ deliver::Worker ◀─ store.claim_due ◀──────────────┘
//! ```

/// Serialises each type as its `Display` text, so a view's JSON spells an id,
/// a status or a time exactly as the console, the CLI and the logs do.
macro_rules! serialize_as_display {
    ($($t:ty),+ $(,)?) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )+};
}

pub mod activity;
pub mod cli;
pub mod config;
pub mod control;
pub mod deliver;
pub mod egress;
pub mod event;
pub mod fence;
pub mod http;
pub mod metrics;
pub mod operations;
pub mod retention;
pub mod retry;
pub mod seal;
pub mod secret;
pub mod source;
pub mod store;
pub mod supervise;
pub mod telemetry;
pub mod tls;
pub mod verify;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::deliver::Worker;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::supervise::{supervise, Health};

/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The running relay: the HTTP server, the delivery worker and the store.
/// Tests build exactly this, on port 0, never a second wiring of it.
pub struct Application {
    port: u16,
    admin_port: Option<u16>,
    server: Server,
    admin_server: Option<Server>,
    store: Store,
    health: Health,
    worker: JoinHandle<()>,
    retention: JoinHandle<()>,
    replays: JoinHandle<()>,
    controls: JoinHandle<()>,
    fence: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The source says what is wrong (error chains print it after this).
    #[error("could not open the store")]
    Store(#[from] StoreError),
    #[error("{var}: cannot listen on {addr}: {source}; pick a free port or address")]
    Bind {
        var: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("could not start the HTTP server: {0}")]
    Server(std::io::Error),
    #[error("could not build the HTTP client for Accelerate: {0}")]
    Client(#[from] deliver::ClientError),
    /// A certificate pair that does not load; the message names the variable.
    #[error("{0}")]
    Tls(String),
}

impl Application {
    /// Opens the store, binds the listener and starts the delivery worker.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let store = Store::open(&config.database, store::Role::Service).await?;
        if let Err(e) = refuse_missing_store_keys(&store).await {
            // Let go of the file (SQLite's lock) before saying why.
            store.close().await;
            return Err(e.into());
        }
        let bind = |var: &'static str, addr| {
            TcpListener::bind(addr).map_err(|source| StartError::Bind { var, addr, source })
        };
        let listener = bind("RELAY_LISTEN", config.listen)?;
        let port = listener.local_addr().map_err(StartError::Server)?.port();
        let admin_listener = match config.admin_listen {
            Some(addr) => Some(bind("RELAY_ADMIN_LISTEN", addr)?),
            None => None,
        };
        let admin_port = match &admin_listener {
            Some(l) => Some(l.local_addr().map_err(StartError::Server)?.port()),
            None => None,
        };
        let metrics = Metrics::new();
        let (stop, stopped) = watch::channel(false);
        let certificates = |files: &Option<tls::TlsFiles>, listener: &'static str| {
            let Some(files) = files else {
                return Ok(None);
            };
            let loaded = files.load().map_err(StartError::Tls)?;
            let certificates = Arc::new(tls::Certificates::new(files.clone(), loaded));
            certificates.report_to(metrics.tls_expiry(listener));
            tokio::spawn(Arc::clone(&certificates).watch(listener, stopped.clone()));
            Ok::<_, StartError>(Some(certificates))
        };
        let tls = certificates(&config.tls, "webhooks")?;
        let admin_tls = match (&config.admin_tls, &tls) {
            // One pair for both listeners: one watcher.
            (Some(files), Some(webhooks)) if files == webhooks.files() => {
                webhooks.report_to(metrics.tls_expiry("admin"));
                Some(Arc::clone(webhooks))
            }
            (files, _) => certificates(files, "admin")?,
        };

        let wake = Arc::new(Notify::new());
        let health = Health::default();
        // Room for a round of attempts: beyond it, events go to the poller.
        let (handoff, handed) = tokio::sync::mpsc::channel(config.delivery_concurrency);
        let gate = control::Gate::new(&config, store.clone(), Some(Arc::clone(&metrics)));
        // Older rows converted before the first claim; then every few
        // seconds for as long as this replica runs (`fence`).
        gate.fence().sweep(&store, &config, Some(&metrics)).await?;
        // The controls as stored, before the first claim or hand-over.
        if let Err(e) = gate.refresh().await {
            tracing::warn!(error = %e, "could not read the delivery controls at start; reading them again every 250 ms");
        }
        let worker = Worker::new(&config, store.clone(), Arc::clone(&wake), Arc::clone(&gate))?
            .with_metrics(Arc::clone(&metrics))
            .with_handoff(handed);
        tokio::spawn({
            let (metrics, mut stopped) = (Arc::clone(&metrics), stopped.clone());
            async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(METRICS_UPKEEP) => metrics.upkeep(),
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                }
            }
        });
        let worker = supervise("delivery worker", health.clone(), stopped.clone(), {
            let (stopped, grace) = (stopped.clone(), config.shutdown_grace);
            move || worker.clone().run(stopped.clone(), grace)
        });
        let controls = supervise("delivery controls", health.clone(), stopped.clone(), {
            let (gate, stopped) = (Arc::clone(&gate), stopped.clone());
            move || Arc::clone(&gate).run(stopped.clone())
        });
        let fence = supervise("upgrade fence", health.clone(), stopped.clone(), {
            let (fence, store) = (Arc::clone(gate.fence()), store.clone());
            let (config, stopped) = (Arc::clone(&config), stopped.clone());
            let metrics = Arc::clone(&metrics);
            move || {
                let metrics = Some(Arc::clone(&metrics));
                Arc::clone(&fence).run(store.clone(), Arc::clone(&config), metrics, stopped.clone())
            }
        });
        let replays = supervise("replays", health.clone(), stopped.clone(), {
            let (store, wake, stopped) = (store.clone(), Arc::clone(&wake), stopped.clone());
            move || operations::run_replays(store.clone(), Arc::clone(&wake), stopped.clone())
        });

        let retention = supervise("retention", health.clone(), stopped.clone(), {
            let (store, keep) = (store.clone(), config.retention);
            move || retention::run(store.clone(), keep, stopped.clone())
        });

        let state = http::AppState {
            config: Arc::clone(&config),
            operations: operations::Operations::new(
                store.clone(),
                Some(Arc::clone(&wake)),
                config.retention,
            )
            .with_gate(Arc::clone(&gate)),
            store: store.clone(),
            health: health.clone(),
            fence: Arc::clone(gate.fence()),
            throttle: http::guard::Throttle::new(Arc::clone(&metrics)),
            metrics,
            intake: deliver::Intake::new(store.clone(), wake, handoff, config.lease, gate),
            operators: http::operators::Operators::start().map_err(StartError::Server)?,
        };
        let (server, admin_server) = http::servers(
            http::Listener {
                socket: listener,
                tls,
            },
            admin_listener.map(|socket| http::Listener {
                socket,
                tls: admin_tls,
            }),
            state,
        )
        .map_err(StartError::Server)?;
        tracing::info!(
            port,
            admin_port,
            admin_api = config.admin_token.is_some(),
            environments = ?config.environments().map(|e| e.as_str()).collect::<Vec<_>>(),
            "accelerate-relay listening"
        );
        Ok(Self {
            port,
            admin_port,
            server,
            admin_server,
            store,
            health,
            worker,
            retention,
            replays,
            controls,
            fence,
            stop,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin listener's port, when `RELAY_ADMIN_LISTEN` is set.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_port
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// The background tasks' health, as `/readyz` reads it.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Stops the server gracefully, as SIGTERM does.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT (or `handle().stop`), then finishes the
    /// requests and delivery attempts in flight and closes the store.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        // The admin server's future handles its stop command: it must run
        // beside the webhook server's, not after it.
        let admin = self
            .admin_server
            .map(|server| (server.handle(), tokio::spawn(server)));
        let served = self.server.await;
        if let Some((handle, running)) = admin {
            handle.stop(true).await;
            let _ = running.await;
        }
        tracing::info!("stopped accepting webhooks; finishing delivery attempts in flight");
        let _ = self.stop.send(true);
        let _ = self.worker.await;
        let _ = self.retention.await;
        let _ = self.replays.await;
        let _ = self.controls.await;
        let _ = self.fence.await;
        self.store.close().await;
        tracing::info!("accelerate-relay stopped");
        served
    }
}

/// Every sealed row must have its key configured: a relay that started
/// without it would let them go dead one by one. Says which key ids are
/// missing and how many rows each holds, and what to do.
async fn refuse_missing_store_keys(store: &Store) -> Result<(), StoreError> {
    let keys = store.keys();
    match keys {
        Some(keys) => tracing::info!(
            store_key = %keys.current(),
            "bodies and headers are sealed at rest with RELAY_STORE_KEY"
        ),
        None => tracing::warn!(
            "RELAY_STORE_KEY is not set: bodies (card holder data) and headers are stored in \
             clear; set it to a 256-bit key (`openssl rand -hex 32`) from a secret to seal them"
        ),
    }
    let missing = store.keys_missing(keys).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = missing
        .iter()
        .map(|(key, rows)| format!("{key} ({rows} deliveries)"))
        .collect();
    Err(StoreError::Unusable(format!(
        "the store holds deliveries sealed with store keys RELAY_STORE_KEY does not hold: {}. \
         Add those keys back to RELAY_STORE_KEY after the first (`accelerate-relay \
         check-config` shows the ids of the keys it was given). If a key is gone for good, \
         its deliveries can never be sent: delete them from the database \
         (`DELETE FROM deliveries WHERE sealed_by = '<id>'`) to start",
        listed.join(", ")
    )))
}
