//! `POST /webhooks/checkoutdotcom[/{environment}]`: the receive path, and the
//! one place where errors become the contract's answers.
//!
//! The checks run in the contract's order; the first that fails answers. A 2xx
//! that means "accepted" is sent only after the store committed the event.

use std::time::Duration;

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::json;

use super::AppState;
use crate::event::{self, Environment, EventError};
use crate::store::{Accepted, ForwardHeaders, NewEvent, StoreError, Timestamp};
use crate::verify::{self, KeyRef, VerifyError};

/// The whole body must arrive within this; a client trickling bytes is cut off.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// What a 503 asks Checkout.com (or anyone) to wait before sending again.
const RETRY_AFTER_SECONDS: &str = "5";

pub async fn receive_in(
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(Some(path.as_str()), &req, payload, &state).await
}

pub async fn receive_sandbox(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(Some("sandbox"), &req, payload, &state).await
}

pub async fn receive_production(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(Some("production"), &req, payload, &state).await
}

/// The bare URL: the one configured environment, 404 when both are.
pub async fn receive_default(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    respond(None, &req, payload, &state).await
}

/// Any method but POST on a webhook path.
pub async fn method_not_allowed(state: web::Data<AppState>) -> HttpResponse {
    state
        .metrics
        .webhook(None, WebhookResult::MethodNotAllowed, Duration::ZERO);
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, "POST"))
        .json(json!({ "error": WebhookResult::MethodNotAllowed.as_str() }))
}

async fn respond(
    environment: Option<&str>,
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> HttpResponse {
    let started = std::time::Instant::now();
    let result = receive(environment, req, payload, state).await;
    let took = started.elapsed();
    match &result {
        Ok(answer) => {
            answer.log();
            let (env, result) = answer.result();
            state.metrics.webhook(Some(env), result, took);
        }
        Err(error) => {
            error.log(environment);
            let env = resolve_environment(environment, &state.config).ok();
            state.metrics.webhook(env, error.result(), took);
        }
    }
    match result {
        Ok(answer) => answer.into_response(),
        Err(error) => error.error_response(),
    }
}

/// Every answer of the receive path, by the code it carries: a refusal's
/// JSON `error`, its log line's `reason` and every answer's `result` label
/// in the metrics are this one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookResult {
    Accepted,
    Duplicate,
    IgnoredEventType,
    IgnoredNoAccelerateToken,
    Unauthorized,
    InvalidSignature,
    MalformedEvent,
    PayloadTooLarge,
    UnknownEnvironment,
    ForbiddenSource,
    StoreUnavailable,
    RequestTimeout,
    RequestHeaderFieldsTooLarge,
    UriTooLong,
    NotImplemented,
    BadRequest,
    MethodNotAllowed,
    /// Any other path on the webhook port.
    NotFound,
}

impl WebhookResult {
    /// In declaration order: `self as usize` is a result's place here.
    pub const ALL: [WebhookResult; 18] = [
        WebhookResult::Accepted,
        WebhookResult::Duplicate,
        WebhookResult::IgnoredEventType,
        WebhookResult::IgnoredNoAccelerateToken,
        WebhookResult::Unauthorized,
        WebhookResult::InvalidSignature,
        WebhookResult::MalformedEvent,
        WebhookResult::PayloadTooLarge,
        WebhookResult::UnknownEnvironment,
        WebhookResult::ForbiddenSource,
        WebhookResult::StoreUnavailable,
        WebhookResult::RequestTimeout,
        WebhookResult::RequestHeaderFieldsTooLarge,
        WebhookResult::UriTooLong,
        WebhookResult::NotImplemented,
        WebhookResult::BadRequest,
        WebhookResult::MethodNotAllowed,
        WebhookResult::NotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookResult::Accepted => "accepted",
            WebhookResult::Duplicate => "duplicate",
            WebhookResult::IgnoredEventType => "ignored_event_type",
            WebhookResult::IgnoredNoAccelerateToken => "ignored_no_accelerate_token",
            WebhookResult::Unauthorized => "unauthorized",
            WebhookResult::InvalidSignature => "invalid_signature",
            WebhookResult::MalformedEvent => "malformed_event",
            WebhookResult::PayloadTooLarge => "payload_too_large",
            WebhookResult::UnknownEnvironment => "unknown_environment",
            WebhookResult::ForbiddenSource => "forbidden_source",
            WebhookResult::StoreUnavailable => "store_unavailable",
            WebhookResult::RequestTimeout => "request_timeout",
            WebhookResult::RequestHeaderFieldsTooLarge => "request_header_fields_too_large",
            WebhookResult::UriTooLong => "uri_too_long",
            WebhookResult::NotImplemented => "not_implemented",
            WebhookResult::BadRequest => "bad_request",
            WebhookResult::MethodNotAllowed => "method_not_allowed",
            WebhookResult::NotFound => "not_found",
        }
    }
}

/// A 200 answer of the contract's table.
enum Answer {
    Ignored {
        environment: Environment,
        event_id: String,
        reason: &'static str,
    },
    Duplicate {
        environment: Environment,
        event_id: String,
    },
    Accepted {
        environment: Environment,
        event_id: String,
        delivery_id: String,
        token: String,
    },
}

impl Answer {
    /// The environment and the result, for the metrics.
    fn result(&self) -> (Environment, WebhookResult) {
        match self {
            Answer::Ignored {
                environment,
                reason: "event_type",
                ..
            } => (*environment, WebhookResult::IgnoredEventType),
            Answer::Ignored { environment, .. } => {
                (*environment, WebhookResult::IgnoredNoAccelerateToken)
            }
            Answer::Duplicate { environment, .. } => (*environment, WebhookResult::Duplicate),
            Answer::Accepted { environment, .. } => (*environment, WebhookResult::Accepted),
        }
    }

    fn into_response(self) -> HttpResponse {
        HttpResponse::Ok().json(match &self {
            Answer::Ignored { reason, .. } => Body {
                reason: Some(reason),
                status: "ignored",
                ..Body::default()
            },
            Answer::Duplicate { event_id, .. } => Body {
                event_id: Some(event_id),
                status: "duplicate",
                ..Body::default()
            },
            Answer::Accepted {
                event_id,
                delivery_id,
                ..
            } => Body {
                delivery_id: Some(delivery_id),
                event_id: Some(event_id),
                status: "accepted",
                ..Body::default()
            },
        })
    }

    fn log(&self) {
        match self {
            Answer::Ignored {
                environment,
                event_id,
                reason,
            } => {
                tracing::info!(%environment, event_id, reason, status = 200, outcome = "ignored", "webhook")
            }
            Answer::Duplicate {
                environment,
                event_id,
            } => {
                tracing::info!(%environment, event_id, status = 200, outcome = "duplicate", "webhook")
            }
            Answer::Accepted {
                environment,
                event_id,
                delivery_id,
                token,
            } => tracing::info!(
                %environment, event_id, delivery_id, accelerate_token = token.as_str(),
                status = 200, outcome = "accepted", "webhook"
            ),
        }
    }
}

/// A 200's body, written without building a JSON map first (one per event);
/// the members in the order they always had.
#[derive(Default, serde::Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    status: &'a str,
}

/// Every way a webhook is refused, mapped to its answer in `error_response`.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("source {0} is not in RELAY_ALLOWED_SOURCES")]
    ForbiddenSource(std::net::IpAddr),
    #[error("no such environment is configured")]
    UnknownEnvironment,
    #[error("body over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body did not arrive within {0:?}")]
    SlowBody(Duration),
    #[error("the body could not be read: {0}")]
    BadBody(String),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Malformed(#[from] EventError),
    #[error("the store could not commit: {0}")]
    Store(#[from] StoreError),
}

impl ReceiveError {
    fn result(&self) -> WebhookResult {
        match self {
            ReceiveError::ForbiddenSource(_) => WebhookResult::ForbiddenSource,
            ReceiveError::UnknownEnvironment => WebhookResult::UnknownEnvironment,
            ReceiveError::TooLarge { .. } => WebhookResult::PayloadTooLarge,
            ReceiveError::SlowBody(_) => WebhookResult::RequestTimeout,
            ReceiveError::BadBody(_) => WebhookResult::BadRequest,
            ReceiveError::Verify(VerifyError::Unauthorized) => WebhookResult::Unauthorized,
            ReceiveError::Verify(VerifyError::InvalidSignature) => WebhookResult::InvalidSignature,
            ReceiveError::Malformed(_) => WebhookResult::MalformedEvent,
            // The database refused this event's values: no resend can help.
            ReceiveError::Store(StoreError::Refused(_)) => WebhookResult::MalformedEvent,
            ReceiveError::Store(_) => WebhookResult::StoreUnavailable,
        }
    }

    fn log(&self, environment: Option<&str>) {
        let status = self.status_code().as_u16();
        let environment = environment.unwrap_or("default");
        if let (ReceiveError::Store(e), 503) = (self, status) {
            tracing::error!(environment, status, error = %e, outcome = "rejected", reason = self.result().as_str(),
                "webhook not stored; answered 503 so Checkout.com sends it again. Check the database (disk space, connection)");
        } else {
            tracing::warn!(environment, status, error = %self, outcome = "rejected", reason = self.result().as_str(), "webhook");
        }
    }
}

impl ResponseError for ReceiveError {
    fn status_code(&self) -> StatusCode {
        match self {
            ReceiveError::ForbiddenSource(_) => StatusCode::FORBIDDEN,
            ReceiveError::UnknownEnvironment => StatusCode::NOT_FOUND,
            ReceiveError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ReceiveError::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            ReceiveError::BadBody(_) => StatusCode::BAD_REQUEST,
            ReceiveError::Verify(_) => StatusCode::UNAUTHORIZED,
            ReceiveError::Malformed(_) => StatusCode::BAD_REQUEST,
            ReceiveError::Store(StoreError::Refused(_)) => StatusCode::BAD_REQUEST,
            ReceiveError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if self.status_code() == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS));
        }
        response.json(json!({ "error": self.result().as_str() }))
    }
}

async fn receive(
    environment: Option<&str>,
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Answer, ReceiveError> {
    let config = &state.config;
    if let Some(policy) = &config.sources {
        let peer = req.peer_addr().map(|a| a.ip());
        let forwarded = forwarded_for(req.headers());
        let client = peer.map(|p| policy.client(p, forwarded.as_deref()));
        match client {
            Some(ip) if policy.allows(ip) => {}
            Some(ip) => return Err(ReceiveError::ForbiddenSource(ip)),
            None => return Err(ReceiveError::ForbiddenSource([0, 0, 0, 0].into())),
        }
    }
    let environment = resolve_environment(environment, config)?;
    let credentials = config
        .credentials(environment)
        .ok_or(ReceiveError::UnknownEnvironment)?;
    let body = read_body(req, payload, config.max_body_bytes).await?;

    let headers = req.headers();
    // A second line of either is refused like a wrong one: which line a
    // receiver would check (or how it would join them) is not ours to guess,
    // and the one line verified is the one forwarded.
    let body = verify::verify(
        credentials,
        only_line(headers, &header::AUTHORIZATION),
        only_line(headers, &CKO_SIGNATURE),
        body,
    )?;
    let event = event::parse(body.bytes())?;
    let event_id = event.id.as_str().to_owned();

    if !config
        .event_types
        .iter()
        .any(|t| t == event.event_type.as_str())
    {
        return Ok(Answer::Ignored {
            environment,
            event_id,
            reason: "event_type",
        });
    }
    let Some(token) = event.token else {
        return Ok(Answer::Ignored {
            environment,
            event_id,
            reason: "no_accelerate_token",
        });
    };
    let redacted = token.redacted();
    let authorization = credentials.key_ref(body.authorization_index());
    let received_at = Timestamp::now();
    let new = NewEvent {
        environment,
        event_id: event.id,
        event_type: event.event_type,
        token,
        payment_id: event.payment_id,
        body: body.into_bytes(),
        headers: forward_headers(headers, authorization),
        received_at,
        leased_until: None,
        sealed: None,
    };
    Ok(match state.intake.accept(new).await? {
        Accepted::New(delivery_id) => Answer::Accepted {
            environment,
            event_id,
            delivery_id: delivery_id.to_string(),
            token: redacted,
        },
        Accepted::Duplicate => Answer::Duplicate {
            environment,
            event_id,
        },
    })
}

static CKO_SIGNATURE: header::HeaderName = header::HeaderName::from_static("cko-signature");

/// The header's value when it came in exactly one line.
fn only_line<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a [u8]> {
    let mut lines = headers.get_all(name);
    match (lines.next(), lines.next()) {
        (Some(only), None) => Some(only.as_bytes()),
        _ => None,
    }
}

fn resolve_environment(
    requested: Option<&str>,
    config: &crate::config::Config,
) -> Result<Environment, ReceiveError> {
    match requested {
        Some(name) => {
            let env: Environment = name.parse().map_err(|_| ReceiveError::UnknownEnvironment)?;
            config
                .credentials(env)
                .map(|_| env)
                .ok_or(ReceiveError::UnknownEnvironment)
        }
        None => {
            let mut configured = config.environments();
            match (configured.next(), configured.next()) {
                (Some(only), None) => Ok(only),
                _ => Err(ReceiveError::UnknownEnvironment),
            }
        }
    }
}

/// Reads the raw body, refusing it as soon as it is known to be over `limit`
/// (by its Content-Length, or while a chunked body streams in).
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ReceiveError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ReceiveError::TooLarge { limit });
    }
    let read = async {
        let mut body = BytesMut::with_capacity(declared.map_or(8192, |n| n as usize));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ReceiveError::BadBody(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(ReceiveError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| ReceiveError::SlowBody(BODY_TIMEOUT))?
}

/// Every `X-Forwarded-For` line, in order, as one list (RFC 9110 §5.3): a
/// proxy may append a line of its own instead of extending the client's. A
/// line that is not text becomes a hop that cannot be read, which ends what
/// is believed.
fn forwarded_for(headers: &HeaderMap) -> Option<String> {
    let lines: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .map(|v| v.to_str().unwrap_or("unreadable"))
        .collect();
    (!lines.is_empty()).then(|| lines.join(","))
}

/// The headers Accelerate needs to check the webhook itself: Content-Type,
/// Authorization, Cko-Signature and any other `Cko-*`, as received; in place
/// of the Authorization value, which configured key it was.
fn forward_headers(headers: &HeaderMap, authorization: KeyRef) -> ForwardHeaders {
    let mut forward = ForwardHeaders::default();
    for (name, value) in headers {
        match name.as_str() {
            "authorization" => forward.push_key("authorization", authorization),
            name if name == "content-type" || name.starts_with("cko-") => {
                forward.push(name, value.as_bytes())
            }
            _ => {}
        }
    }
    forward
}

#[cfg(test)]
mod tests {
    use super::WebhookResult;

    /// The metrics index their counters by `result as usize`.
    #[test]
    fn every_result_is_listed_at_its_own_place() {
        for (place, result) in WebhookResult::ALL.iter().enumerate() {
            assert_eq!(*result as usize, place, "{result:?}");
        }
        let mut labels: Vec<_> = WebhookResult::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), WebhookResult::ALL.len());
    }
}
