//! The actix-web application: routes, limits and the state handlers share.

pub mod admin;
pub mod console;
pub mod guard;
pub mod operators;
pub mod ops;
pub mod transport;
pub mod webhook;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_http::error::DispatchError;
use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::{AppConfig, Server};
use actix_web::http::header;
use actix_web::{
    guard as route_guard, web, App, FromRequest, Handler, HttpRequest, HttpResponse, Responder,
};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::supervise::Health;

/// What every handler can reach.
pub struct AppState {
    pub config: Arc<Config>,
    /// What operators do, for the admin API and the console alike.
    pub operations: crate::operations::Operations,
    pub store: Store,
    /// Which supervised background tasks are down (`/readyz` is 503 then).
    pub health: Health,
    /// Closed when a newer release migrated the database (`/readyz` is 503).
    pub fence: Arc<crate::fence::Fence>,
    pub metrics: Arc<Metrics>,
    /// Stores each accepted event and hands it to the delivery worker.
    pub intake: crate::deliver::Intake,
    /// Wrong admin tokens counted per client address.
    pub throttle: guard::Throttle,
    /// Where operators' reads run, off the webhook workers.
    pub operators: operators::Operators,
}

/// Headers (request line and headers) must arrive within this; slow clients
/// are cut off. A TLS handshake gets as long again.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound socket and, with a certificate pair configured, the certificates
/// it serves HTTPS with (HTTPS only).
pub struct Listener {
    pub socket: TcpListener,
    pub tls: Option<Arc<crate::tls::Certificates>>,
}

/// The webhook server and, with `RELAY_ADMIN_LISTEN`, the admin server. The
/// admin API, `/metrics` (and the console) are served on the admin listener
/// only when there is one, else on the webhook port; the admin API only with
/// `RELAY_ADMIN_TOKEN` set. The probes stay on the webhook port.
pub fn servers(
    listener: Listener,
    admin_listener: Option<Listener>,
    state: AppState,
) -> std::io::Result<(Server, Option<Server>)> {
    let grace = state.config.shutdown_grace.as_secs().max(1);
    let operator_here = admin_listener.is_none();
    let state = web::Data::new(state);
    let webhook_state = state.clone();
    let webhook_app = move || {
        App::new()
            .app_data(webhook_state.clone())
            .wrap_fn(transport::last_answer)
            .service(get("/healthz", ops::healthz))
            .service(get("/readyz", ops::readyz))
            .configure(|cfg| operator_routes(cfg, operator_here, &webhook_state.config))
            .service(webhook_route(
                "/webhooks/checkoutdotcom",
                web::post().to(webhook::receive_default),
            ))
            // Static routes first: actix matches them without its regex engine,
            // which showed in the benchmark's profile.
            .service(webhook_route(
                "/webhooks/checkoutdotcom/sandbox",
                web::post().to(webhook::receive_sandbox),
            ))
            .service(webhook_route(
                "/webhooks/checkoutdotcom/production",
                web::post().to(webhook::receive_production),
            ))
            .service(webhook_route(
                "/webhooks/checkoutdotcom/{environment}",
                web::post().to(webhook::receive_in),
            ))
            .default_service(web::to(not_found))
    };
    let webhook = listen(
        actix_server::Server::build(),
        "webhooks",
        listener,
        webhook_app,
        Some(Arc::clone(&state.metrics)),
    )?
    .shutdown_timeout(grace)
    .run();
    let admin = match admin_listener {
        Some(listener) => {
            let admin_app = move || {
                App::new()
                    .app_data(state.clone())
                    .wrap_fn(transport::last_answer)
                    .configure(|cfg| operator_routes(cfg, true, &state.config))
                    .default_service(web::to(operator_not_found))
            };
            Some(
                listen(
                    actix_server::Server::build().workers(1),
                    "admin",
                    listener,
                    admin_app,
                    None,
                )?
                .shutdown_timeout(grace)
                .run(),
            )
        }
        None => None,
    };
    Ok((webhook, admin))
}

/// As actix-web's `HttpServer` builds a listener, but over
/// `transport::Connection`, so the parser's own refusals get the relay's
/// answer (counted in `metrics` on the webhook port) and a closing answer is
/// a connection's last.
fn listen<F, T, B>(
    builder: actix_server::ServerBuilder,
    name: &str,
    listener: Listener,
    app: F,
    metrics: Option<Arc<Metrics>>,
) -> std::io::Result<actix_server::ServerBuilder>
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: actix_service::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: actix_web::body::MessageBody + 'static,
{
    let addr = listener.socket.local_addr()?;
    let tls = match &listener.tls {
        Some(certificates) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            certificates
                .server_config()
                .map_err(std::io::Error::other)?,
        ))),
        None => None,
    };
    builder.listen(name, listener.socket, move || {
        let tls = tls.clone();
        let metrics = metrics.clone();
        let app = app()
            .into_factory()
            .map_err(|err: actix_web::Error| err.error_response());
        let h1 = actix_http::HttpService::build()
            .client_request_timeout(HEADER_TIMEOUT)
            .local_addr(addr)
            .on_connect_ext(
                |io: &transport::Connection, data: &mut actix_http::Extensions| {
                    data.insert(io.last_answer());
                },
            )
            // The app's host/address defaults only serve URL generation,
            // which the relay does not use (actix keeps their setter private).
            .h1(map_config(app, |_| AppConfig::default()));
        fn_service(move |io: actix_web::rt::net::TcpStream| {
            let (tls, metrics) = (tls.clone(), metrics.clone());
            async move {
                let peer = io.peer_addr().ok();
                let stream = match tls {
                    None => transport::Stream::Plain(io),
                    // A handshake that fails (plain HTTP to this port, an
                    // old TLS version) or stalls ends the connection.
                    Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(io)).await {
                        Ok(Ok(tls)) => transport::Stream::Tls(Box::new(tls)),
                        Ok(Err(e)) => {
                            tracing::debug!(peer = peer.map(tracing::field::display), error = %e, "TLS handshake failed");
                            return Err(DispatchError::Io(e));
                        }
                        Err(_) => {
                            return Err(DispatchError::Io(std::io::ErrorKind::TimedOut.into()))
                        }
                    },
                };
                let connection = transport::Connection::new(stream, peer, metrics);
                Ok::<_, DispatchError>((connection, peer))
            }
        })
        .and_then(h1)
    })
}

/// A webhook path: POST only; any other method is 405 with `Allow: POST`.
fn webhook_route(path: &str, post: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(post)
        .default_service(web::to(webhook::method_not_allowed))
}

fn operator_routes(cfg: &mut web::ServiceConfig, here: bool, config: &Config) {
    if !here {
        return;
    }
    cfg.service(get("/metrics", ops::metrics));
    if config.admin_token.is_some() {
        admin::routes(cfg);
        console::routes(cfg, config);
    }
}

/// A query string as its pairs, in order and with repeats (a map would keep
/// the last of two and hide the other). Decoded strictly: a name or value
/// that is not UTF-8 once percent-decoded is an error naming it, where a
/// lossy decoder would search for U+FFFD instead.
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    let decode = |raw: &str| -> Result<String, Vec<u8>> {
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(&raw.replace('+', " ")).collect();
        String::from_utf8(bytes).map_err(|e| e.into_bytes())
    };
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode(name).map_err(|_| {
                "a parameter name is not valid UTF-8 once percent-decoded".to_owned()
            })?;
            let value = decode(value).map_err(|_| {
                format!("{name}: not valid UTF-8 once percent-decoded, so no stored value has it")
            })?;
            Ok((name, value))
        })
        .collect()
}

/// A path that answers GET (and HEAD, as RFC 9110 asks: the same head, no
/// body); any other method is 405 with `Allow`.
pub(crate) fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    web::resource(path)
        .route(web::route().guard(get_or_head()).to(handler))
        .default_service(web::to(|req: HttpRequest| {
            method_not_allowed(req, "GET, HEAD")
        }))
}

/// A path that answers POST only; any other method is 405 with `Allow`.
pub(crate) fn post<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    web::resource(path)
        .route(web::post().to(handler))
        .default_service(web::to(|req: HttpRequest| method_not_allowed(req, "POST")))
}

/// A path with a page (GET, HEAD) and the form it sends (POST).
pub(crate) fn get_post<G, GArgs, P, PArgs>(path: &str, page: G, form: P) -> actix_web::Resource
where
    G: Handler<GArgs>,
    GArgs: FromRequest + 'static,
    G::Output: Responder + 'static,
    P: Handler<PArgs>,
    PArgs: FromRequest + 'static,
    P::Output: Responder + 'static,
{
    web::resource(path)
        .route(web::route().guard(get_or_head()).to(page))
        .route(web::post().to(form))
        .default_service(web::to(|req: HttpRequest| {
            method_not_allowed(req, "GET, HEAD, POST")
        }))
}

fn get_or_head() -> route_guard::AnyGuard {
    route_guard::Any(route_guard::Get()).or(route_guard::Head())
}

async fn method_not_allowed(req: HttpRequest, allow: &'static str) -> HttpResponse {
    let mut response = if req.path().starts_with("/console") {
        console::method_not_allowed(allow)
    } else {
        HttpResponse::MethodNotAllowed().json(serde_json::json!({
            "error": "method_not_allowed",
            "message": format!("{} is not answered here; use {allow}", req.method()),
        }))
    };
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

/// Unknown paths on the webhook port are answered and counted like webhooks.
async fn not_found(state: web::Data<AppState>) -> HttpResponse {
    state
        .metrics
        .webhook(None, webhook::WebhookResult::NotFound, Duration::ZERO);
    not_found_answer()
}

async fn operator_not_found() -> HttpResponse {
    not_found_answer()
}

fn not_found_answer() -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({ "error": "not_found" }))
}
