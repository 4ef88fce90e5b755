//! Probes for the orchestrator.

use actix_web::{web, HttpResponse};

use super::AppState;

/// 200 while the process serves; says nothing about the store on purpose, so a
/// database outage does not get the relay restarted in a loop.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// 200 when the store answers, so a load balancer stops sending webhooks that
/// could only be answered 503.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.store.ping().await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the store does not answer");
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({ "status": "unavailable", "reason": "store" }))
        }
    }
}
