//! The actix-web application: routes, limits and the state handlers share.

pub mod ops;
pub mod webhook;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use tokio::sync::Notify;

use crate::config::Config;
use crate::store::Store;

/// What every handler can reach.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    /// Tells the delivery worker that an event was just committed.
    pub wake: Arc<Notify>,
}

/// Headers (request line and headers) must arrive within this; slow clients are cut off.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

pub fn server(listener: TcpListener, state: AppState) -> std::io::Result<Server> {
    let grace = state.config.shutdown_grace;
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(ops::healthz))
            .route("/readyz", web::get().to(ops::readyz))
            .route(
                "/webhooks/checkoutdotcom",
                web::post().to(webhook::receive_default),
            )
            // Static routes first: actix matches them without its regex engine,
            // which showed in the benchmark's profile.
            .route(
                "/webhooks/checkoutdotcom/sandbox",
                web::post().to(webhook::receive_sandbox),
            )
            .route(
                "/webhooks/checkoutdotcom/production",
                web::post().to(webhook::receive_production),
            )
            .route(
                "/webhooks/checkoutdotcom/{environment}",
                web::post().to(webhook::receive_in),
            )
            .default_service(web::to(not_found))
    })
    .client_request_timeout(HEADER_TIMEOUT)
    .shutdown_timeout(grace.as_secs().max(1))
    .listen(listener)?
    .run();
    Ok(server)
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({ "error": "not_found" }))
}
