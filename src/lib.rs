//! accelerate-relay: receives Checkout.com payment webhooks, keeps the approved
//! and declined ones that carry an `AccelerateToken`, stores them durably and
//! forwards them byte for byte to Accelerate.
//!
//! ```text
//! Checkout.com ─▶ http::webhook ─▶ verify ─▶ event ─▶ store.accept ─▶ 200
//! Accelerate   ◀─ deliver::Worker ◀─ store.claim_due ◀──────────────┘
//! ```

pub mod cli;
pub mod config;
pub mod deliver;
pub mod event;
pub mod http;
pub mod retention;
pub mod retry;
pub mod secret;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod verify;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::deliver::Worker;
use crate::store::{Store, StoreError};

/// The running relay: the HTTP server, the delivery worker and the store.
/// Tests build exactly this, on port 0, never a second wiring of it.
pub struct Application {
    port: u16,
    server: Server,
    store: Store,
    worker: JoinHandle<()>,
    retention: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not open the store: {0}")]
    Store(#[from] StoreError),
    #[error("RELAY_LISTEN: cannot listen on {addr}: {source}; pick a free port or address")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("could not start the HTTP server: {0}")]
    Server(std::io::Error),
    #[error("could not build the HTTP client for Accelerate: {0}")]
    Client(#[from] reqwest::Error),
}

impl Application {
    /// Opens the store, binds the listener and starts the delivery worker.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let store = Store::open(&config.database, store::Role::Service).await?;
        let listener = TcpListener::bind(config.listen).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let port = listener.local_addr().map_err(StartError::Server)?.port();

        let wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let worker = Worker::new(&config, store.clone(), Arc::clone(&wake))?;
        let worker = tokio::spawn(worker.run(stopped.clone(), config.shutdown_grace));
        let retention = tokio::spawn(retention::run(store.clone(), config.retention, stopped));

        let state = http::AppState {
            config: Arc::clone(&config),
            store: store.clone(),
            wake,
        };
        let server = http::server(listener, state).map_err(StartError::Server)?;
        tracing::info!(
            port,
            environments = ?config.environments().map(|e| e.as_str()).collect::<Vec<_>>(),
            "accelerate-relay listening"
        );
        Ok(Self {
            port,
            server,
            store,
            worker,
            retention,
            stop,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Stops the server gracefully, as SIGTERM does.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT (or `handle().stop`), then finishes the
    /// requests and delivery attempts in flight and closes the store.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        tracing::info!("stopped accepting webhooks; finishing delivery attempts in flight");
        let _ = self.stop.send(true);
        let _ = self.worker.await;
        let _ = self.retention.await;
        self.store.close().await;
        tracing::info!("accelerate-relay stopped");
        served
    }
}
