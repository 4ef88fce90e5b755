//! The admin API: deliveries listed, shown with their attempts, and retried;
//! console sessions listed and revoked; behind `Authorization: Bearer
//! $RELAY_ADMIN_TOKEN` (`guard::Operator`).
//!
//! It works over `store` like the CLI does, and never answers with a body, a
//! forwarded header or a full token: `Delivery` and `AttemptView` hold none.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use super::guard::Operator;
use super::operators::Stopped;
use super::{get, post, AppState};
use crate::event::Environment;
use crate::store::{DeliveryId, EndedBy, ListFilter, Retried, StoreError, Timestamp};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/admin/deliveries", list))
        .service(post("/admin/deliveries/retry-dead", retry_dead))
        .service(get("/admin/deliveries/{id}", show))
        .service(post("/admin/deliveries/{id}/retry", retry))
        .service(get("/admin/sessions", sessions))
        .service(post("/admin/sessions/{id}/revoke", revoke_session));
}

/// Who an audit line says acted: the admin API, the CLI, or a console
/// session (by its id).
pub const API: &str = "api";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("too many wrong admin tokens from this address; try again in {} s", .0.as_secs().max(1))]
    Throttled(std::time::Duration),
    #[error("no {0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the store did not answer: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Store(_) | AdminError::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        let body = match self {
            AdminError::Unauthorized => {
                response
                    .insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
                json!({ "error": "unauthorized" })
            }
            AdminError::Throttled(wait) => {
                response.insert_header((header::RETRY_AFTER, retry_after(*wait)));
                json!({ "error": "too_many_attempts", "message": self.to_string() })
            }
            AdminError::NotFound(_) => json!({ "error": "not_found", "message": self.to_string() }),
            AdminError::BadRequest(m) => json!({ "error": "bad_request", "message": m }),
            AdminError::Conflict(m) => json!({ "error": "attempt_in_flight", "message": m }),
            AdminError::Store(_) => json!({ "error": "store_unavailable" }),
            AdminError::Stopped(_) => {
                json!({ "error": "shutting_down", "message": self.to_string() })
            }
        };
        response.json(body)
    }
}

/// Whole seconds to wait, rounded up: `Retry-After` never says 0 while
/// the wait lasts.
pub(super) fn retry_after(wait: std::time::Duration) -> String {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        .max(1)
        .to_string()
}

/// A manual retry as the admin API and the console make it: the delivery
/// pending and due now, the worker woken, an audit line; refused while an
/// attempt is in flight.
pub(super) async fn retry_now(
    req: &HttpRequest,
    state: &AppState,
    actor: &str,
    action: &'static str,
    id: DeliveryId,
) -> Result<Retried, StoreError> {
    let retried = state.store.retry(id, Timestamp::now()).await?;
    let result = match &retried {
        Retried::Due => {
            state.wake.notify_one();
            "pending, due now"
        }
        Retried::NotFound => "not found",
        Retried::InFlight { .. } => "refused: an attempt is in flight",
    };
    audit(req, actor, action, &id.to_string(), result);
    Ok(retried)
}

/// What an operator reads when a retry meets an attempt in flight.
pub(super) fn in_flight_message(id: DeliveryId, lease_ends: Option<&str>) -> String {
    format!(
        "{id}: an attempt is being sent to Accelerate now (its lease ends at {} at the latest); \
         its outcome will be in the history. Retry after it, if it failed.",
        lease_ends.unwrap_or("its lease's end")
    )
}

/// Every dead delivery (of `environment`, or of both) retried as `retry_now` does one.
pub(super) async fn retry_dead_now(
    req: &HttpRequest,
    state: &AppState,
    actor: &str,
    action: &'static str,
    environment: Option<Environment>,
) -> Result<u64, StoreError> {
    let retried = state
        .store
        .retry_dead(Timestamp::now(), environment)
        .await?;
    state.wake.notify_one();
    audit(
        req,
        actor,
        action,
        environment.map_or("all environments", Environment::as_str),
        &format!("{retried} pending, due now"),
    );
    Ok(retried)
}

/// One line per admin request that got past the token, for the audit trail:
/// who acted (`actor`: `api` or the console session's id), what was done
/// (`action`), to what (`subject`: a delivery, an environment, a session),
/// with what result, from which address. Field names no log line already
/// has (`target` is the logger's own), so a JSON reader keeps every one.
pub(super) fn audit(
    req: &HttpRequest,
    actor: &str,
    action: &'static str,
    subject: &str,
    result: &str,
) {
    let peer = req.peer_addr().map(|a| a.ip());
    tracing::info!(
        audit = true,
        actor,
        action,
        subject,
        result,
        path = req.path(),
        peer = peer.map(tracing::field::display),
        "admin action"
    );
}

async fn list(
    _: Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    let query = query_pairs(&req)?;
    let filter = ListFilter::parse(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(AdminError::BadRequest)?;
    let store = state.store.clone();
    // The page is serialised where it was read, off the webhook workers.
    let (listed, page) = state
        .operators
        .run(async move {
            let deliveries = store.list(&filter).await?;
            let next = (deliveries.len() == filter.limit as usize)
                .then(|| deliveries.last().map(|d| d.id.clone()))
                .flatten();
            let page = serde_json::to_vec(&json!({ "deliveries": deliveries, "next": next }))
                .expect("a page of deliveries serialises");
            Ok::<_, AdminError>((deliveries.len(), page))
        })
        .await?;
    audit(&req, API, "list", "deliveries", &format!("{listed} listed"));
    Ok(HttpResponse::Ok()
        .insert_header(header::ContentType::json())
        .body(page))
}

async fn show(
    _: Operator,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    only(&req, &[])?;
    let id = delivery_id(&id)?;
    let store = state.store.clone();
    let detail = state
        .operators
        .run(async move { store.detail(id).await.map_err(AdminError::from) })
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("delivery {id}")))?;
    audit(&req, API, "show", &id.to_string(), "shown");
    Ok(HttpResponse::Ok().json(detail))
}

async fn retry(
    _: Operator,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    only(&req, &[])?;
    let id = delivery_id(&id)?;
    match retry_now(&req, &state, API, "retry", id).await? {
        Retried::Due => {}
        Retried::NotFound => return Err(AdminError::NotFound(format!("delivery {id}"))),
        Retried::InFlight { lease_ends } => {
            return Err(AdminError::Conflict(in_flight_message(
                id,
                lease_ends.as_deref(),
            )))
        }
    }
    match state.store.get(id).await? {
        Some(delivery) => Ok(HttpResponse::Accepted().json(delivery)),
        // Purged between the retry and now: it was delivered meanwhile.
        None => Err(AdminError::NotFound(format!("delivery {id}"))),
    }
}

async fn retry_dead(
    _: Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    // A typo here must not widen the action to every environment.
    let environment = match only(&req, &["environment"])?.first() {
        Some((_, e)) => Some(parse::<Environment>("environment", e)?),
        None => None,
    };
    let retried = retry_dead_now(&req, &state, API, "retry-dead", environment).await?;
    Ok(HttpResponse::Ok().json(json!({ "retried": retried })))
}

/// The console sessions neither ended nor expired, newest first. Never the
/// cookie's secret or a hash: what an operator needs to tell them apart.
async fn sessions(
    _: Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    only(&req, &[])?;
    let found = state.store.active_sessions(Timestamp::now()).await?;
    let shown: Vec<_> = found
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "peer": s.peer,
                "created_at": s.created_at.to_string(),
                "expires_at": s.expires_at.to_string(),
            })
        })
        .collect();
    audit(
        &req,
        API,
        "list-sessions",
        "sessions",
        &format!("{} listed", shown.len()),
    );
    Ok(HttpResponse::Ok().json(json!({ "sessions": shown })))
}

/// Ends a console session on every replica (its next request signs in again).
async fn revoke_session(
    _: Operator,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    only(&req, &[])?;
    let id = super::console::session_id(&id).map_err(AdminError::BadRequest)?;
    let ended = state
        .store
        .end_session(id, Timestamp::now(), EndedBy::Revoked)
        .await?;
    let result = if ended { "revoked" } else { "not found" };
    audit(&req, API, "revoke-session", id, result);
    if !ended {
        return Err(AdminError::NotFound(format!("active session {id}")));
    }
    Ok(HttpResponse::Ok().json(json!({ "revoked": id })))
}

/// The query string as its pairs, in order and with repeats (a map would
/// keep the last of two and hide the other).
fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, AdminError> {
    super::query_pairs(req.query_string()).map_err(AdminError::BadRequest)
}

/// The query, when it holds only `allowed` parameters, each at most once.
fn only(req: &HttpRequest, allowed: &[&str]) -> Result<Vec<(String, String)>, AdminError> {
    let pairs = query_pairs(req)?;
    for (i, (name, _)) in pairs.iter().enumerate() {
        if !allowed.contains(&name.as_str()) {
            return Err(AdminError::BadRequest(match allowed {
                [] => format!("unknown parameter `{name}`; this endpoint takes none"),
                _ => format!(
                    "unknown parameter `{name}`; this endpoint takes {}",
                    allowed.join(", ")
                ),
            }));
        }
        if pairs[..i].iter().any(|(earlier, _)| earlier == name) {
            return Err(AdminError::BadRequest(format!(
                "{name}: given more than once; give it once"
            )));
        }
    }
    Ok(pairs)
}

fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, AdminError>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| AdminError::BadRequest(format!("{name}: {e}")))
}

fn delivery_id(value: &str) -> Result<DeliveryId, AdminError> {
    value.parse().map_err(AdminError::BadRequest)
}
