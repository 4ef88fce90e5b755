//! Probes for the orchestrator.

use actix_web::{web, HttpResponse};

use super::AppState;

/// 200 while the process serves; says nothing about the store on purpose, so a
/// database outage does not get the relay restarted in a loop.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// 200 when the store answers and every background task runs, so a load
/// balancer stops sending webhooks that could only be answered 503 or would
/// never be delivered.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let down = state.health.down();
    if !down.is_empty() {
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "unavailable", "reason": "background_task", "tasks": down
        }));
    }
    if let Some(reason) = state.fence.reason() {
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "unavailable", "reason": "schema_newer", "message": reason
        }));
    }
    match state.store.ping().await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the store does not answer");
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({ "status": "unavailable", "reason": "store" }))
        }
    }
}

/// How long a scrape waits for the store's gauges before answering without them.
const SCRAPE_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Prometheus text. The store's gauges are read now, bounded, so a slow
/// database makes `accelerate_relay_store_up` 0 instead of hanging the scrape.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let gauges = tokio::time::timeout(SCRAPE_STORE_TIMEOUT, state.store.gauges()).await;
    let gauges = match gauges {
        Ok(Ok(gauges)) => Some(gauges),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics scrape: the store did not answer");
            None
        }
        Err(_) => {
            tracing::warn!("metrics scrape: the store did not answer in time");
            None
        }
    };
    let text = state
        .metrics
        .render(gauges.as_deref(), crate::store::Timestamp::now());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
