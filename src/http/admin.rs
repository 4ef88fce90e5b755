//! The admin API: deliveries listed, shown with their attempts, and retried;
//! replays by time range; console sessions listed and revoked; behind
//! `Authorization: Bearer $RELAY_ADMIN_TOKEN` (`guard::Operator`).
//!
//! The handlers parse and render: what they do is `operations`', as for the
//! console and the CLI. No answer holds a body, a forwarded header or a full
//! token: `Delivery`, `AttemptView` and `Replay` hold none.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use super::guard::Operator;
use super::operators::Stopped;
use super::{get, get_post, post, AppState};
use crate::event::Environment;
use crate::operations::{self, Actor, Caller, OperationError};
use crate::store::{DeliveryId, EndedBy, ListFilter, ReplayId, StoreError, Timestamp};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/admin/deliveries", list))
        .service(post("/admin/deliveries/retry-dead", retry_dead))
        .service(get("/admin/deliveries/{id}", show))
        .service(post("/admin/deliveries/{id}/retry", retry))
        .service(get_post("/admin/replays", list_replays, start_replay))
        .service(get("/admin/replays/{id}", show_replay))
        .service(post("/admin/replays/{id}/cancel", cancel_replay))
        .service(get("/admin/environments", environments))
        .service(post(
            "/admin/environments/{environment}/{action}",
            pause_or_resume,
        ))
        .service(get("/admin/sessions", sessions))
        .service(post("/admin/sessions/{id}/revoke", revoke_session));
}

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
    #[error("{0}")]
    Ended(String),
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
            AdminError::Conflict(_) | AdminError::Ended(_) => StatusCode::CONFLICT,
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
            AdminError::Ended(m) => json!({ "error": "replay_ended", "message": m }),
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

impl From<OperationError> for AdminError {
    fn from(e: OperationError) -> Self {
        match e {
            OperationError::NotFound(what) => AdminError::NotFound(what),
            OperationError::InFlight(m) => AdminError::Conflict(m),
            OperationError::Ended(m) => AdminError::Ended(m),
            OperationError::Store(e) => AdminError::Store(e),
        }
    }
}

/// The caller of an HTTP request, for the audit trail.
pub(super) fn caller(req: &HttpRequest, actor: Actor) -> Caller {
    Caller {
        actor,
        peer: req.peer_addr().map(|a| a.ip()),
        path: Some(req.path().to_owned()),
    }
}

async fn list(
    _: Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    let query = query_pairs(&req)?;
    let filter = ListFilter::parse(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(AdminError::BadRequest)?;
    let (operations, who) = (state.operations.clone(), caller(&req, Actor::Api));
    // The page is serialised where it was read, off the webhook workers.
    let page = state
        .operators
        .run(async move {
            let deliveries = operations.list(&who, &filter).await?;
            let next = (deliveries.len() == filter.limit as usize)
                .then(|| deliveries.last().map(|d| d.id))
                .flatten();
            let page = serde_json::to_vec(&json!({ "deliveries": deliveries, "next": next }))
                .expect("a page of deliveries serialises");
            Ok::<_, AdminError>(page)
        })
        .await?;
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
    let (operations, who) = (state.operations.clone(), caller(&req, Actor::Api));
    let detail = state
        .operators
        .run(async move { operations.detail(&who, id).await.map_err(AdminError::from) })
        .await?;
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
    state
        .operations
        .retry(&caller(&req, Actor::Api), id)
        .await?;
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
    let retried = state
        .operations
        .retry_dead(&caller(&req, Actor::Api), environment)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "retried": retried })))
}

/// `POST /admin/replays`: the body names every field once and nothing else.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    environment: String,
    received_after: String,
    received_before: String,
    statuses: Vec<String>,
    /// Only count what would be replayed.
    #[serde(default)]
    dry_run: bool,
}

/// 202 with the replay (`state`, `matched`, `queued`), which the replay
/// runner then sends on whichever replica; with `dry_run`, 200 and the
/// count only.
async fn start_replay(
    _: Operator,
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    only(&req, &[])?;
    let body: ReplayBody = serde_json::from_slice(&body).map_err(|e| {
        AdminError::BadRequest(format!(
            "the body must be JSON {{\"environment\", \"received_after\", \"received_before\", \
             \"statuses\": [...]}} (and optionally \"dry_run\": true): {e}"
        ))
    })?;
    let statuses: Vec<&str> = body.statuses.iter().map(String::as_str).collect();
    let request = operations::replay_request(
        &body.environment,
        &body.received_after,
        &body.received_before,
        &statuses,
        Timestamp::now(),
    )
    .map_err(AdminError::BadRequest)?;
    let retained_since = state.operations.retained_since();
    if body.dry_run {
        let matched = state.operations.preview_replay(&request).await?;
        return Ok(HttpResponse::Ok().json(json!({
            "matched": matched,
            "retained_since": retained_since,
        })));
    }
    let replay = state
        .operations
        .start_replay(&caller(&req, Actor::Api), &request)
        .await?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/admin/replays/{}", replay.id)))
        .json(json!({ "replay": replay, "retained_since": retained_since })))
}

async fn list_replays(
    _: Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    only(&req, &[])?;
    let replays = state.operations.replays().await?;
    Ok(HttpResponse::Ok().json(json!({ "replays": replays })))
}

async fn show_replay(
    _: Operator,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    only(&req, &[])?;
    let id: ReplayId = id.parse().map_err(AdminError::BadRequest)?;
    Ok(HttpResponse::Ok().json(state.operations.replay(id).await?))
}

async fn cancel_replay(
    _: Operator,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    only(&req, &[])?;
    let id: ReplayId = id.parse().map_err(AdminError::BadRequest)?;
    let replay = state
        .operations
        .cancel_replay(&caller(&req, Actor::Api), id)
        .await?;
    Ok(HttpResponse::Ok().json(replay))
}

/// Each environment's delivery controls: paused, breaker, rate, attempts
/// in flight on this replica, pending count and oldest pending age.
async fn environments(
    _: Operator,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    only(&req, &[])?;
    let environments = state.operations.environments().await?;
    Ok(HttpResponse::Ok().json(json!({ "environments": environments })))
}

/// `…/pause` or `…/resume`: 200 with the environment as it now is and
/// whether this call changed it.
async fn pause_or_resume(
    _: Operator,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AdminError> {
    let (environment, action) = path.into_inner();
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return Err(AdminError::NotFound(format!(
                "action `{other}`; use pause or resume"
            )))
        }
    };
    only(&req, &[])?;
    let env = parse::<Environment>("environment", &environment)?;
    let changed = state
        .operations
        .pause(&caller(&req, Actor::Api), env, paused)
        .await?;
    let shown = state
        .operations
        .environments()
        .await?
        .into_iter()
        .find(|v| v.environment == env);
    Ok(HttpResponse::Ok().json(json!({ "environment": shown, "changed": changed })))
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
                "created_at": s.created_at,
                "expires_at": s.expires_at,
            })
        })
        .collect();
    caller(&req, Actor::Api).audit(
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
    caller(&req, Actor::Api).audit("revoke-session", id, result);
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
