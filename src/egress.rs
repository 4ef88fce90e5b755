//! The way out to Accelerate: which certificate authorities are trusted and
//! which proxy, if any, carries the connection.
//!
//! Payment networks often reach the internet only through an allowlisting
//! egress proxy, and some inspect TLS with a CA of their own; a relay that
//! cannot use either cannot deliver there at all. The proxy is chosen per
//! destination the way curl does (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`):
//! HTTPS goes through a `CONNECT` tunnel (the proxy sees the host name, never
//! the body), plain HTTP is sent to the proxy in absolute form.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Extra CAs trusted for Accelerate, beside the bundled roots.
#[derive(Clone, Debug)]
pub struct CaBundle {
    pub path: PathBuf,
    pub certificates: Vec<CertificateDer<'static>>,
}

impl CaBundle {
    /// Reads a PEM file of one or more certificates; each must be one
    /// rustls can use as a trust anchor, so a bad bundle stops start-up
    /// rather than the first delivery.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| {
            format!(
                "could not read {}: {e}; set it to a readable PEM file of CA certificates",
                path.display()
            )
        })?;
        let certificates = CertificateDer::pem_slice_iter(&text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
        if certificates.is_empty() {
            return Err(format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for (n, cert) in certificates.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| {
                format!(
                    "certificate {} of {} cannot be a trust anchor: {e}",
                    n + 1,
                    path.display()
                )
            })?;
        }
        Ok(Self {
            path: path.to_owned(),
            certificates,
        })
    }
}

/// One proxy variable's value, checked: an `http://` URL with a host.
#[derive(Clone)]
pub struct ProxyUrl {
    raw: String,
    /// As it may be shown: any password replaced by `***`.
    shown: String,
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl ProxyUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        // curl reads a value without a scheme as http://.
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("http://{raw}")
        };
        let url = reqwest::Url::parse(&with_scheme)
            .map_err(|e| format!("is not a URL ({e}); e.g. http://proxy.internal:3128"))?;
        let shown = {
            let mut masked = url.clone();
            if masked.password().is_some() {
                let _ = masked.set_password(Some("***"));
            }
            masked.to_string().trim_end_matches('/').to_owned()
        };
        if url.scheme() != "http" {
            return Err(format!(
                "{shown}: only an HTTP proxy (http://host:port, which tunnels HTTPS with CONNECT) is supported, not {}://",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{shown} names no host"));
        }
        Ok(Self {
            raw: with_scheme,
            shown,
        })
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// The proxy variables, as set.
#[derive(Clone, Debug, Default)]
pub struct Proxies {
    pub https: Option<ProxyUrl>,
    pub http: Option<ProxyUrl>,
    pub no_proxy: Option<String>,
}

impl Proxies {
    fn matcher(&self) -> Matcher {
        let raw = |p: &Option<ProxyUrl>| p.as_ref().map(|p| p.raw.clone()).unwrap_or_default();
        Matcher::builder()
            .https(raw(&self.https))
            .http(raw(&self.http))
            .no(self.no_proxy.clone().unwrap_or_default())
            .build()
    }

    /// How a delivery to `url` leaves, as `check-config` shows it.
    pub fn describe(&self, url: &Uri) -> String {
        let (proxy, var) = match url.scheme_str() {
            Some("https") => (&self.https, "HTTPS_PROXY"),
            _ => (&self.http, "HTTP_PROXY"),
        };
        match (proxy, self.matcher().intercept(url)) {
            (Some(proxy), Some(_)) => format!("through the proxy {} ({var})", proxy.shown()),
            (Some(_), None) => "direct (NO_PROXY)".to_owned(),
            (None, _) => format!("direct ({var} not set)"),
        }
    }

    /// `Proxy-Authorization` for requests to `url` when they go to a proxy
    /// in absolute form (plain HTTP); a tunnel carries its own.
    pub fn authorization_for(&self, url: &Uri) -> Option<HeaderValue> {
        if url.scheme_str() != Some("http") {
            return None;
        }
        self.matcher().intercept(url)?.basic_auth().cloned()
    }
}

/// Opens the TCP connection for one destination: directly, through a
/// `CONNECT` tunnel, or to the proxy itself. TLS, where the destination
/// wants it, is layered on top by hyper-rustls with the destination's name.
#[derive(Clone)]
pub struct Connector {
    tcp: HttpConnector,
    proxies: Arc<Matcher>,
    /// Each proxy as it may be shown in a message.
    https_shown: Option<String>,
    http_shown: Option<String>,
}

impl Connector {
    pub fn new(tcp: HttpConnector, proxies: &Proxies) -> Self {
        Self {
            tcp,
            proxies: Arc::new(proxies.matcher()),
            https_shown: proxies.https.as_ref().map(|p| p.shown().to_owned()),
            http_shown: proxies.http.as_ref().map(|p| p.shown().to_owned()),
        }
    }
}

/// Why the proxy did not carry a connection: an attempt outcome of its own,
/// since what to fix is the proxy or its allowlist, not Accelerate.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("could not connect to the proxy {proxy} ({var}): {cause}; check that it runs and that {var} names it")]
    Connect {
        proxy: String,
        var: &'static str,
        cause: String,
    },
    #[error("the proxy {proxy} refused a tunnel to {target}: it answered {status}; check that it allows CONNECT to {target}, and the credentials in {var}")]
    Refused {
        proxy: String,
        var: &'static str,
        target: String,
        status: String,
    },
    #[error("the proxy {proxy} ({var}) broke off while opening a tunnel to {target}: {reason}")]
    Broken {
        proxy: String,
        var: &'static str,
        target: String,
        reason: String,
    },
}

impl tower_service::Service<Uri> for Connector {
    type Response = Link;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Link, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some(intercept) = self.proxies.intercept(&dst) else {
            let direct = self.tcp.call(dst);
            return Box::pin(async move {
                Ok(Link {
                    io: direct.await?,
                    to_proxy: false,
                })
            });
        };
        let https = dst.scheme_str() == Some("https");
        let (var, proxy) = if https {
            ("HTTPS_PROXY", self.https_shown.clone())
        } else {
            ("HTTP_PROXY", self.http_shown.clone())
        };
        let proxy = proxy.unwrap_or_default();
        let connecting = self.tcp.call(intercept.uri().clone());
        let auth = intercept.basic_auth().cloned();
        Box::pin(async move {
            let io = connecting.await.map_err(|e| ProxyError::Connect {
                proxy: proxy.clone(),
                var,
                cause: causes(&e),
            })?;
            if !https {
                return Ok(Link { io, to_proxy: true });
            }
            let host = dst.host().unwrap_or_default();
            let target = format!("{host}:{}", dst.port_u16().unwrap_or(443));
            let stream = tunnel(io.into_inner(), &target, auth.as_ref())
                .await
                .map_err(|e| match e {
                    Tunnel::Refused(status) => ProxyError::Refused {
                        proxy,
                        var,
                        target,
                        status,
                    },
                    Tunnel::Broken(reason) => ProxyError::Broken {
                        proxy,
                        var,
                        target,
                        reason,
                    },
                })?;
            Ok(Link {
                io: TokioIo::new(stream),
                to_proxy: false,
            })
        })
    }
}

/// `e` and its causes in one line.
pub(crate) fn causes(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

enum Tunnel {
    Refused(String),
    Broken(String),
}

/// Largest proxy answer head read for a `CONNECT`.
const MAX_TUNNEL_HEAD: usize = 8 * 1024;

/// Asks the proxy for a tunnel to `target` (`host:port`). Written here rather
/// than taken from hyper-util, whose tunnel drops the proxy's status, which
/// is what an operator needs to see (403 from an allowlist, 407, 502).
async fn tunnel(
    mut stream: TcpStream,
    target: &str,
    auth: Option<&HeaderValue>,
) -> Result<TcpStream, Tunnel> {
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    if let Some(auth) = auth {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(auth.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let broken = |e: io::Error| Tunnel::Broken(e.to_string());
    stream.write_all(&head).await.map_err(broken)?;
    let mut answer = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(broken)?;
        if n == 0 {
            return Err(Tunnel::Broken(
                "it closed the connection before answering".to_owned(),
            ));
        }
        answer.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&answer) {
            Ok(httparse::Status::Complete(len)) => {
                let code = response.code.unwrap_or(0);
                if !(200..300).contains(&code) {
                    let reason = response.reason.unwrap_or("");
                    return Err(Tunnel::Refused(
                        format!("{code} {reason}").trim_end().to_owned(),
                    ));
                }
                // The TLS client speaks first: a proxy that sends more
                // than its answer is not a tunnel.
                if len != answer.len() {
                    return Err(Tunnel::Broken("it sent data after its answer".to_owned()));
                }
                return Ok(stream);
            }
            Ok(httparse::Status::Partial) if answer.len() < MAX_TUNNEL_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(Tunnel::Broken(format!(
                    "its answer's head is over {MAX_TUNNEL_HEAD} bytes"
                )))
            }
            Err(e) => return Err(Tunnel::Broken(format!("its answer is not HTTP ({e})"))),
        }
    }
}

/// A connection as hyper sees it; `to_proxy` makes hyper write requests in
/// absolute form (`POST http://host/path`), as a proxy expects.
pub struct Link {
    io: TokioIo<TcpStream>,
    to_proxy: bool,
}

impl Connection for Link {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.to_proxy)
    }
}

impl hyper::rt::Read for Link {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Link {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// Whether an attempt's error is a TLS failure (an untrusted or expired
/// certificate, a wrong host name, a server that does not speak TLS).
pub fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    find(e)
}

/// Whether an attempt's error is the proxy's.
pub fn proxy_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ProxyError> {
    find(e)
}

/// The first `E` in `e`'s causes, looking inside `io::Error`s too (whose
/// `source` skips the error they wrap).
fn find<'a, E: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if let Some(found) = find::<E>(inner) {
                return Some(found);
            }
        }
        next = e.source();
    }
    None
}

/// Where the relay's TLS trust comes from, as `check-config` shows it.
pub fn describe_trust(ca: Option<&CaBundle>) -> String {
    match ca {
        Some(ca) => format!(
            "bundled roots and {} certificate(s) from {} (RELAY_ACCELERATE_CA_FILE)",
            ca.certificates.len(),
            ca.path.display()
        ),
        None => "bundled roots (Mozilla's; RELAY_ACCELERATE_CA_FILE not set)".to_owned(),
    }
}
