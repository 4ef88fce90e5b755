//! The operator's console: the admin API's operations as web pages, under
//! `/console`, behind a sign-in with the admin token.
//!
//! Server-rendered (`pages`), no script at all, one embedded stylesheet. A
//! session cookie names a session the store keeps (`session`); every form
//! that changes something carries the session's CSRF token. Wrong tokens at
//! the sign-in are throttled like the API's (`guard`). Like the admin API it acts
//! through `operations` and never shows a body, a header or a full token.

mod chart;
mod pages;
mod session;

use std::collections::HashMap;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use maud::Markup;

use super::admin::{caller, retry_after};
use super::operators::Stopped;
use super::{get, get_post, guard, post, AppState};
use crate::config::Config;
use crate::event::Environment;
use crate::operations::{Actor, OperationError};
use crate::store::{
    DeliveryId, EndedBy, ListFilter, ReplayId, ReplayRequest, StoreError, Timestamp,
};
use pages::{EnvironmentView, ListForm, ReplayForm, Window};
use session::{Session, Sessions};

pub use session::{parse_id as session_id, COOKIE};

/// No script, no other origin, no framing: the page is what the relay sent.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("console.css");

/// Mounts `/console` (only called with an admin token configured).
pub fn routes(cfg: &mut web::ServiceConfig, config: &Config) {
    let Some(token) = &config.admin_token else {
        return;
    };
    let sessions = web::Data::new(Sessions::new(token, config.console_secure_cookie));
    // A form too large, not a form, or broken gets the console's own page.
    let forms = web::FormConfig::default()
        .limit(FORM_LIMIT)
        .error_handler(|err, _req| {
            let (status, message) = match &err {
                actix_web::error::UrlencodedError::Overflow { .. } => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("The form is larger than the console takes ({FORM_LIMIT} bytes). Go back and send it again."),
                ),
                actix_web::error::UrlencodedError::ContentType => (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "The console takes forms sent as application/x-www-form-urlencoded, as its own pages send them.".to_owned(),
                ),
                other => (
                    StatusCode::BAD_REQUEST,
                    format!("The form could not be read ({other}). Go back, reload the page and try again."),
                ),
            };
            let page = html(status, pages::problem(None, status.canonical_reason().unwrap_or("Bad request"), &message));
            actix_web::error::InternalError::from_response(err, page).into()
        });
    cfg.service(
        web::scope("/console")
            .app_data(sessions)
            .app_data(forms)
            .wrap(
                DefaultHeaders::new()
                    .add((header::CONTENT_SECURITY_POLICY, CSP))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::X_FRAME_OPTIONS, "DENY"))
                    .add((header::REFERRER_POLICY, "no-referrer"))
                    .add((header::CACHE_CONTROL, "no-store")),
            )
            .service(get("", overview))
            .service(get("/", overview))
            .service(get_post("/sign-in", sign_in_form, sign_in))
            .service(post("/sign-out", sign_out))
            .service(get("/deliveries", deliveries))
            .service(get("/deliveries/{id}", delivery))
            .service(post("/deliveries/{id}/retry", retry))
            .service(get_post("/retry-dead", confirm_retry_dead, retry_dead))
            .service(post(
                "/environments/{environment}/{action}",
                pause_or_resume,
            ))
            .service(get_post("/replays", replays_page, start_replay))
            .service(get("/replays/confirm", confirm_replay))
            .service(post("/replays/{id}/cancel", cancel_replay))
            .service(get("/sessions", sessions_page))
            .service(post("/sessions/{id}/revoke", revoke_session))
            .service(get("/assets/console.css", stylesheet))
            .default_service(web::to(not_found)),
    );
}

/// The largest form the console takes: its forms are a token and a CSRF field.
const FORM_LIMIT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("sign in first")]
    SignIn,
    #[error(
        "This form was not sent by this console session (it may be from before a sign-in). \
         Go back, reload the page and try again."
    )]
    Forged,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Ended(String),
    #[error(
        "Too many wrong admin tokens came from your address. Wait {} s, then sign in with \
         the value of RELAY_ADMIN_TOKEN.", .0.as_secs().max(1)
    )]
    Throttled(std::time::Duration),
    #[error(
        "The store did not answer ({0}). /readyz on the webhook port tells whether it is \
         down; try again when it is back."
    )]
    Store(#[from] StoreError),
    #[error("{0}")]
    Stopped(#[from] Stopped),
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::SignIn => StatusCode::SEE_OTHER,
            ConsoleError::Forged => StatusCode::FORBIDDEN,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Conflict(_) | ConsoleError::Ended(_) => StatusCode::CONFLICT,
            ConsoleError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            ConsoleError::Store(_) | ConsoleError::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let title = match self {
            ConsoleError::SignIn => return see_other("/console/sign-in"),
            ConsoleError::Forged => "Refused",
            ConsoleError::NotFound(_) => "Not found",
            ConsoleError::BadRequest(_) => "Bad request",
            ConsoleError::Conflict(_) => "An attempt is in flight",
            ConsoleError::Ended(_) => "Already ended",
            ConsoleError::Throttled(_) => "Too many attempts",
            ConsoleError::Store(_) => "Store unavailable",
            ConsoleError::Stopped(_) => "Shutting down",
        };
        let mut response = html(
            self.status_code(),
            pages::problem(None, title, &self.to_string()),
        );
        if let ConsoleError::Throttled(wait) = self {
            let value = HeaderValue::from_str(&retry_after(*wait)).expect("digits");
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// A form's or query's fields, when each is one the page takes and is
/// given once: a repeated or unknown field is 400 naming it, never the
/// last of two taken silently.
fn only(
    pairs: Vec<(String, String)>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, ConsoleError> {
    let mut fields = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if !allowed.contains(&name.as_str()) {
            return Err(ConsoleError::BadRequest(format!(
                "This page takes no `{name}`. Use the console's own forms and links."
            )));
        }
        if fields.contains_key(&name) {
            return Err(ConsoleError::BadRequest(format!(
                "`{name}` was given more than once. Use the console's own forms and links."
            )));
        }
        fields.insert(name, value);
    }
    Ok(fields)
}

/// A console session as the audit trail names it.
fn as_operator(req: &HttpRequest, session: &Session) -> crate::operations::Caller {
    caller(req, Actor::Console(session.id().to_owned()))
}

impl From<OperationError> for ConsoleError {
    fn from(e: OperationError) -> Self {
        match e {
            OperationError::NotFound(what) => {
                ConsoleError::NotFound(format!("There is no {what}."))
            }
            OperationError::InFlight(m) => ConsoleError::Conflict(m),
            OperationError::Ended(m) => ConsoleError::Ended(m),
            OperationError::Store(e) => ConsoleError::Store(e),
        }
    }
}

/// The signed-in operator, or a redirect to the sign-in page.
async fn signed_in(
    req: &HttpRequest,
    sessions: &Sessions,
    state: &AppState,
) -> Result<Session, ConsoleError> {
    sessions
        .read(req, &state.store, Timestamp::now())
        .await?
        .ok_or(ConsoleError::SignIn)
}

/// A state-changing form: signed in, and carrying this session's CSRF token.
async fn checked(
    req: &HttpRequest,
    sessions: &Sessions,
    state: &AppState,
    form: &HashMap<String, String>,
) -> Result<Session, ConsoleError> {
    let session = signed_in(req, sessions, state).await?;
    if !session.accepts(form.get("csrf").map(String::as_str)) {
        tracing::warn!(
            path = req.path(),
            peer = req.peer_addr().map(|a| tracing::field::display(a.ip())),
            actor = session.id(),
            outcome = "refused",
            "console form without this session's CSRF token"
        );
        return Err(ConsoleError::Forged);
    }
    Ok(session)
}

async fn sign_in_form(
    req: HttpRequest,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    Ok(
        match sessions.read(&req, &state.store, Timestamp::now()).await? {
            Some(_) => see_other("/console"),
            None => {
                let warning = cookie_warning(&req, &sessions);
                html(StatusCode::OK, pages::sign_in(None, warning.as_deref()))
            }
        },
    )
}

/// A `Secure` cookie over plain HTTP to anything but this machine is dropped
/// by the browser, and the sign-in would seem to do nothing: say so first.
fn cookie_warning(req: &HttpRequest, sessions: &Sessions) -> Option<String> {
    let info = req.connection_info();
    let host = info.host();
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    let local = name == "localhost" || name.starts_with("127.") || name == "[::1]";
    (sessions.secure() && info.scheme() == "http" && !local).then(|| {
        format!(
            "This page came over plain HTTP from {host}, and the session cookie is Secure: \
             the browser will not keep it. Reach the console over HTTPS, or through a tunnel \
             to localhost; on a network you trust, RELAY_CONSOLE_SECURE_COOKIE=false allows \
             plain HTTP."
        )
    })
}

async fn sign_in(
    req: HttpRequest,
    form: web::Form<Vec<(String, String)>>,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = only(form.into_inner(), &["token"])?;
    let tokens = state
        .config
        .admin_token
        .as_ref()
        .ok_or(ConsoleError::SignIn)?;
    // Trimmed as the configured tokens are: a pasted token with a newline works.
    let sent = form.get("token").map(|t| t.trim().as_bytes());
    let client = guard::client(&req, &state.config);
    let token = match guard::admit(&state.throttle, tokens, client, sent, "console sign-in") {
        Ok(token) => token,
        Err(Some(wait)) => return Err(ConsoleError::Throttled(wait)),
        Err(None) => {
            let warning = cookie_warning(&req, &sessions);
            let page = pages::sign_in(
                Some("That is not the admin token. Use the value of RELAY_ADMIN_TOKEN."),
                warning.as_deref(),
            );
            return Ok(html(StatusCode::UNAUTHORIZED, page));
        }
    };
    let (session, cookie) = sessions
        .start(&state.store, token, client, Timestamp::now())
        .await?;
    as_operator(&req, &session).audit("console-sign-in", session.id(), "signed in");
    let mut response = see_other("/console");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("the cookie is hex and ASCII attributes"),
    );
    Ok(response)
}

async fn sign_out(
    req: HttpRequest,
    form: web::Form<Vec<(String, String)>>,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = only(form.into_inner(), &["csrf"])?;
    let session = checked(&req, &sessions, &state, &form).await?;
    end_session(&req, &state, &session, session.id(), EndedBy::SignedOut).await?;
    Ok(signed_out(&sessions))
}

/// Ends `id` (this session or another) in the store, for every replica.
async fn end_session(
    req: &HttpRequest,
    state: &AppState,
    session: &Session,
    id: &str,
    by: EndedBy,
) -> Result<bool, ConsoleError> {
    let ended = state.store.end_session(id, Timestamp::now(), by).await?;
    let (action, result) = match (by, ended) {
        (EndedBy::SignedOut, _) => ("console-sign-out", "signed out"),
        (EndedBy::Revoked, true) => ("console-revoke-session", "revoked"),
        (EndedBy::Revoked, false) => ("console-revoke-session", "not found"),
    };
    as_operator(req, session).audit(action, id, result);
    Ok(ended)
}

/// To the sign-in page, with the cookie removed from the browser.
fn signed_out(sessions: &Sessions) -> HttpResponse {
    let mut response = see_other("/console/sign-in");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&sessions.end()).expect("ASCII attributes"),
    );
    response
}

async fn sessions_page(
    req: HttpRequest,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let query = only(
        super::query_pairs(req.query_string()).map_err(ConsoleError::BadRequest)?,
        &["notice"],
    )?;
    let session = signed_in(&req, &sessions, &state).await?;
    let active = state.store.active_sessions(Timestamp::now()).await?;
    let notice = query
        .get("notice")
        .and_then(|n| sessions.open_notice(&session, n))
        .map(notice_text);
    Ok(html(
        StatusCode::OK,
        pages::sessions(&session, &active, notice.as_deref()),
    ))
}

async fn revoke_session(
    req: HttpRequest,
    id: web::Path<String>,
    form: web::Form<Vec<(String, String)>>,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = only(form.into_inner(), &["csrf"])?;
    let session = checked(&req, &sessions, &state, &form).await?;
    let id = session_id(&id).map_err(ConsoleError::BadRequest)?;
    let own = id == session.id();
    let by = if own {
        EndedBy::SignedOut
    } else {
        EndedBy::Revoked
    };
    if !end_session(&req, &state, &session, id, by).await? && !own {
        return Err(ConsoleError::NotFound(format!(
            "There is no active session {id}: it has ended or expired already."
        )));
    }
    if own {
        return Ok(signed_out(&sessions));
    }
    Ok(see_other(&format!(
        "/console/sessions?notice={}",
        sessions.seal_notice(&session, &format!("revoked:{id}"))
    )))
}

async fn overview(
    req: HttpRequest,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let query = only(
        super::query_pairs(req.query_string()).map_err(ConsoleError::BadRequest)?,
        &["window", "notice"],
    )?;
    let session = signed_in(&req, &sessions, &state).await?;
    let notice = query
        .get("notice")
        .and_then(|n| sessions.open_notice(&session, n))
        .map(notice_text);
    let window = match query.get("window").map(String::as_str) {
        None | Some("hour") => Window::Hour,
        Some("day") => Window::Day,
        Some(other) => {
            return Err(ConsoleError::BadRequest(format!(
                "`{other}` is not a chart window; use hour or day"
            )))
        }
    };
    let now = Timestamp::now();
    let activity = &state.metrics.activity;
    let (store, operations) = (state.store.clone(), state.operations.clone());
    let (counts, controls) = state
        .operators
        .run(async move {
            let counts = store.counts().await?;
            let controls = operations.environments().await?;
            Ok::<_, ConsoleError>((counts, controls))
        })
        .await?;
    let environments: Vec<EnvironmentView> = counts
        .into_iter()
        .filter(|c| {
            let configured = state.config.credentials.contains_key(&c.environment);
            configured || c.pending + c.delivered + c.dead > 0
        })
        .map(|counts| EnvironmentView {
            minutes: activity.last(counts.environment, window.minutes(), now),
            control: controls
                .iter()
                .find(|c| c.environment == counts.environment)
                .cloned(),
            counts,
        })
        .collect();
    let page = pages::overview(
        &session,
        &environments,
        window,
        now,
        activity.since(),
        notice.as_deref(),
    );
    Ok(html(StatusCode::OK, page))
}

async fn deliveries(
    req: HttpRequest,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&req, &sessions, &state).await?;
    let query = super::query_pairs(req.query_string()).map_err(ConsoleError::BadRequest)?;
    let mut form = ListForm::default();
    let mut notice = None;
    let mut pairs = Vec::new();
    // An empty field of the form is no filter; the time inputs send no zone
    // and may omit seconds, and are UTC.
    for (name, value) in query.iter().filter(|(_, v)| !v.trim().is_empty()) {
        let value = value.trim();
        let field = match name.as_str() {
            "notice" => {
                notice = sessions.open_notice(&session, value).map(notice_text);
                continue;
            }
            "status" => &mut form.status,
            "environment" => &mut form.environment,
            "accelerate_token" => &mut form.accelerate_token,
            "event_id" => &mut form.event_id,
            "payment_id" => &mut form.payment_id,
            "received_after" => &mut form.received_after,
            "received_before" => &mut form.received_before,
            _ => {
                pairs.push((name.clone(), value.to_owned()));
                continue;
            }
        };
        // A `datetime-local` input shows no zone.
        value.trim_end_matches('Z').clone_into(field);
        let value = match name.as_str() {
            "received_after" | "received_before" => utc(value),
            _ => value.to_owned(),
        };
        pairs.push((name.clone(), value));
    }
    let (found, older) =
        match ListFilter::parse(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            Err(message) => (Err(message), None),
            Ok(filter) => {
                let limit = filter.limit as usize;
                let (operations, who) = (state.operations.clone(), as_operator(&req, &session));
                let list = state
                    .operators
                    .run(async move {
                        operations
                            .list(&who, &filter)
                            .await
                            .map_err(ConsoleError::from)
                    })
                    .await?;
                let older = (list.len() == limit)
                    .then(|| list.last().map(|d| older_page(&pairs, d.id)))
                    .flatten();
                (Ok(list), older)
            }
        };
    let status = if found.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let found = found.as_deref().map_err(String::as_str);
    let page = pages::deliveries(&session, &form, found, notice.as_deref(), older);
    Ok(html(status, page))
}

async fn delivery(
    req: HttpRequest,
    id: web::Path<String>,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let query = only(
        super::query_pairs(req.query_string()).map_err(ConsoleError::BadRequest)?,
        &["notice"],
    )?;
    let session = signed_in(&req, &sessions, &state).await?;
    let id = delivery_id(&id)?;
    let (operations, who) = (state.operations.clone(), as_operator(&req, &session));
    let detail = state
        .operators
        .run(async move {
            match operations.detail(&who, id).await {
                Err(OperationError::NotFound(_)) => Err(missing(id)),
                other => other.map_err(ConsoleError::from),
            }
        })
        .await?;
    let notice = query
        .get("notice")
        .and_then(|n| sessions.open_notice(&session, n))
        .map(notice_text);
    Ok(html(
        StatusCode::OK,
        pages::delivery(&session, &detail, notice.as_deref()),
    ))
}

async fn retry(
    req: HttpRequest,
    id: web::Path<String>,
    form: web::Form<Vec<(String, String)>>,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = only(form.into_inner(), &["csrf"])?;
    let session = checked(&req, &sessions, &state, &form).await?;
    let id = delivery_id(&id)?;
    match state
        .operations
        .retry(&as_operator(&req, &session), id)
        .await
    {
        Err(OperationError::NotFound(_)) => return Err(missing(id)),
        other => other?,
    }
    Ok(see_other(&format!(
        "/console/deliveries/{id}?notice={}",
        sessions.seal_notice(&session, "retried")
    )))
}

async fn confirm_retry_dead(
    req: HttpRequest,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let query = only(
        super::query_pairs(req.query_string()).map_err(ConsoleError::BadRequest)?,
        &["environment"],
    )?;
    let session = signed_in(&req, &sessions, &state).await?;
    let environment = environment(&query)?;
    let dead = state
        .store
        .counts()
        .await?
        .iter()
        .filter(|c| environment.is_none_or(|e| e == c.environment))
        .map(|c| c.dead)
        .sum();
    Ok(html(
        StatusCode::OK,
        pages::confirm_retry_dead(&session, environment, dead),
    ))
}

async fn retry_dead(
    req: HttpRequest,
    form: web::Form<Vec<(String, String)>>,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = only(form.into_inner(), &["csrf", "environment"])?;
    let session = checked(&req, &sessions, &state, &form).await?;
    let environment = environment(&form)?;
    let retried = state
        .operations
        .retry_dead(&as_operator(&req, &session), environment)
        .await?;
    Ok(see_other(&format!(
        "/console/deliveries?status=pending&notice={}",
        sessions.seal_notice(&session, &format!("retried-dead:{retried}"))
    )))
}

/// The overview's Pause and Resume buttons.
async fn pause_or_resume(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Vec<(String, String)>>,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let (environment, action) = path.into_inner();
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return Err(ConsoleError::NotFound(format!(
                "There is no `{other}` for an environment: its buttons pause and resume."
            )))
        }
    };
    let form = only(form.into_inner(), &["csrf"])?;
    let session = checked(&req, &sessions, &state, &form).await?;
    let env: Environment = environment
        .parse()
        .map_err(|e: crate::event::EventError| ConsoleError::BadRequest(e.to_string()))?;
    let changed = state
        .operations
        .pause(&as_operator(&req, &session), env, paused)
        .await?;
    let notice = match (paused, changed) {
        (true, true) => "paused",
        (true, false) => "already-paused",
        (false, true) => "resumed",
        (false, false) => "not-paused",
    };
    Ok(see_other(&format!(
        "/console?notice={}",
        sessions.seal_notice(&session, &format!("{notice}:{env}"))
    )))
}

async fn replays_page(
    req: HttpRequest,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&req, &sessions, &state).await?;
    let mut notice = None;
    for (name, value) in super::query_pairs(req.query_string()).map_err(ConsoleError::BadRequest)? {
        match name.as_str() {
            "notice" if notice.is_none() => {
                notice = sessions.open_notice(&session, &value).map(notice_text)
            }
            _ => {
                return Err(ConsoleError::BadRequest(format!(
                    "This page takes no `{name}`. Use the form to start a replay."
                )))
            }
        }
    }
    replays_form(
        &session,
        &state,
        &ReplayForm::default(),
        notice.as_deref(),
        None,
    )
    .await
}

async fn replays_form(
    session: &Session,
    state: &AppState,
    form: &ReplayForm,
    notice: Option<&str>,
    error: Option<&str>,
) -> Result<HttpResponse, ConsoleError> {
    let found = state.operations.replays().await?;
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let retained_since = state.operations.retained_since();
    Ok(html(
        status,
        pages::replays(session, form, &found, retained_since, notice, error),
    ))
}

/// The replay form's fields, each once (statuses repeat, each once), and
/// nothing else but the CSRF token of a POST; parsed by the same parser as
/// the admin API's JSON and the CLI's flags.
fn replay_fields(
    pairs: &[(String, String)],
    now: Timestamp,
) -> (ReplayForm, Result<ReplayRequest, String>) {
    let mut form = ReplayForm::default();
    let mut seen: Vec<&str> = Vec::new();
    let mut problem = None;
    for (name, value) in pairs {
        let value = value.trim();
        let field = match name.as_str() {
            "status" => {
                form.statuses.push(value.to_owned());
                continue;
            }
            "csrf" => continue,
            "environment" => &mut form.environment,
            "received_after" => &mut form.received_after,
            "received_before" => &mut form.received_before,
            other => {
                problem.get_or_insert(format!(
                    "unknown field `{other}`; the form has environment, received_after, received_before and status"
                ));
                continue;
            }
        };
        if seen.contains(&name.as_str()) {
            problem.get_or_insert(format!("{name}: given more than once; give it once"));
        }
        seen.push(name);
        value.to_owned().clone_into(field);
    }
    if let Some(problem) = problem {
        return (form, Err(problem));
    }
    let statuses: Vec<&str> = form.statuses.iter().map(String::as_str).collect();
    let request = crate::operations::replay_request(
        &form.environment,
        &utc(&form.received_after),
        &utc(&form.received_before),
        &statuses,
        now,
    );
    // A `datetime-local` input shows no zone.
    for field in [&mut form.received_after, &mut form.received_before] {
        let shown = field.trim_end_matches('Z').to_owned();
        *field = shown;
    }
    (form, request)
}

async fn confirm_replay(
    req: HttpRequest,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let session = signed_in(&req, &sessions, &state).await?;
    let pairs = super::query_pairs(req.query_string()).map_err(ConsoleError::BadRequest)?;
    let (form, request) = replay_fields(&pairs, Timestamp::now());
    let request = match request {
        Ok(request) => request,
        Err(message) => return replays_form(&session, &state, &form, None, Some(&message)).await,
    };
    let matched = state.operations.preview_replay(&request).await?;
    Ok(html(
        StatusCode::OK,
        pages::confirm_replay(&session, &request, matched),
    ))
}

async fn start_replay(
    req: HttpRequest,
    form: web::Form<Vec<(String, String)>>,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let pairs = form.into_inner();
    let csrf = only(
        pairs
            .iter()
            .filter(|(name, _)| name == "csrf")
            .cloned()
            .collect(),
        &["csrf"],
    )?;
    let session = checked(&req, &sessions, &state, &csrf).await?;
    let (form, request) = replay_fields(&pairs, Timestamp::now());
    let request = match request {
        Ok(request) => request,
        Err(message) => return replays_form(&session, &state, &form, None, Some(&message)).await,
    };
    let replay = state
        .operations
        .start_replay(&as_operator(&req, &session), &request)
        .await?;
    Ok(see_other(&format!(
        "/console/replays?notice={}",
        sessions.seal_notice(
            &session,
            &format!("replay-started:{}:{}", replay.id, replay.matched)
        )
    )))
}

async fn cancel_replay(
    req: HttpRequest,
    id: web::Path<String>,
    form: web::Form<Vec<(String, String)>>,
    sessions: web::Data<Sessions>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = only(form.into_inner(), &["csrf"])?;
    let session = checked(&req, &sessions, &state, &form).await?;
    let id: ReplayId = id.parse().map_err(ConsoleError::BadRequest)?;
    let replay = state
        .operations
        .cancel_replay(&as_operator(&req, &session), id)
        .await?;
    Ok(see_other(&format!(
        "/console/replays?notice={}",
        sessions.seal_notice(
            &session,
            &format!("replay-cancelled:{}:{}", replay.id, replay.queued)
        )
    )))
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "private, max-age=300"))
        .body(STYLESHEET)
}

/// The console's page for a method its path does not answer (405).
pub(super) fn method_not_allowed(allow: &str) -> HttpResponse {
    html(
        StatusCode::METHOD_NOT_ALLOWED,
        pages::problem(
            None,
            "Method not allowed",
            &format!(
                "This console page answers {allow} only. Use the console's links and buttons."
            ),
        ),
    )
}

async fn not_found() -> HttpResponse {
    ConsoleError::NotFound("There is no such console page.".to_owned()).error_response()
}

fn html(status: StatusCode, page: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(page.into_string())
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

fn missing(id: DeliveryId) -> ConsoleError {
    ConsoleError::NotFound(format!(
        "There is no delivery {id}. Delivered events are purged after RELAY_RETENTION_HOURS."
    ))
}

fn delivery_id(value: &str) -> Result<DeliveryId, ConsoleError> {
    value.parse().map_err(ConsoleError::BadRequest)
}

fn environment(fields: &HashMap<String, String>) -> Result<Option<Environment>, ConsoleError> {
    match fields.get("environment").map(|e| e.trim()) {
        None | Some("") => Ok(None),
        Some(e) => e
            .parse()
            .map(Some)
            .map_err(|e| ConsoleError::BadRequest(format!("environment: {e}"))),
    }
}

/// The sentence a sealed notice stands for (never text from the query).
fn notice_text(notice: &str) -> String {
    match notice.split_once(':') {
        None if notice == "retried" => {
            "Retried: the delivery was made pending and due now.".to_owned()
        }
        Some(("retried-dead", "1")) => {
            "Retried: 1 dead delivery was made pending and due now.".to_owned()
        }
        Some(("retried-dead", n)) => {
            format!("Retried: {n} dead deliveries were made pending and due now.")
        }
        Some(("paused", env)) => format!(
            "Paused: no attempt goes to {env}'s Accelerate (on any replica, within a second) until you resume; events are still accepted and stored."
        ),
        Some(("already-paused", env)) => format!("{env} was already paused."),
        Some(("resumed", env)) => format!(
            "Resumed: {env}'s held deliveries drain at the paced rate, oldest first."
        ),
        Some(("not-paused", env)) => format!("{env} was not paused."),
        Some(("revoked", id)) => format!("Revoked: session {id} is signed out on every replica."),
        Some(("replay-started", rest)) => match rest.split_once(':') {
            Some((id, "1")) => format!("Replay {id} started: 1 event is being sent again."),
            Some((id, n)) => format!(
                "Replay {id} started: {n} events are being sent again, at most {} a second.",
                crate::store::STEP_SIZE
            ),
            None => "Replay started.".to_owned(),
        },
        Some(("replay-cancelled", rest)) => match rest.split_once(':') {
            Some((id, n)) => {
                format!("Replay {id} cancelled: the {n} events it had queued are sent, no more.")
            }
            None => "Replay cancelled.".to_owned(),
        },
        _ => "Done.".to_owned(),
    }
}

/// A `datetime-local` value (`2026-11-25T18:00` or with seconds) as UTC RFC 3339.
fn utc(value: &str) -> String {
    let time = value.get(10..).unwrap_or_default();
    let has_zone = time.ends_with(['Z', 'z']) || time.contains(['+', '-']);
    match (value.len(), has_zone) {
        (16, false) => format!("{value}:00Z"),
        (_, false) => format!("{value}Z"),
        _ => value.to_owned(),
    }
}

/// The same filters, from below `last`.
fn older_page(pairs: &[(String, String)], last: DeliveryId) -> String {
    let last = last.to_string();
    let query: Vec<(&str, &str)> = pairs
        .iter()
        .filter(|(k, _)| k != "cursor")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("cursor", last.as_str())])
        .collect();
    let encoded = serde_urlencoded::to_string(query).expect("string pairs always encode");
    format!("/console/deliveries?{encoded}")
}
