//! A fast mock Accelerate: answers 200 to everything and notes when each
//! benchmark event arrived.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::load::{index_of, Clock};

pub struct Mock {
    pub addr: SocketAddr,
    /// Arrival time (µs on the bench clock) per event index; 0 = not yet.
    pub got_at: Arc<Vec<AtomicU64>>,
    pub received: Arc<AtomicU64>,
    https: bool,
}

/// TLS for a mock: a CA made for the run (written where the relay's
/// `RELAY_ACCELERATE_CA_FILE` can read it) and a certificate for localhost.
pub struct MockTls {
    pub ca_file: std::path::PathBuf,
    acceptor: tokio_rustls::TlsAcceptor,
    /// The same certificate and key as files, for the relay to serve
    /// (RELAY_TLS_CERT, RELAY_TLS_KEY).
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    /// A client that trusts the CA, for the load generator.
    pub client: Arc<rustls::ClientConfig>,
}

impl MockTls {
    pub fn new(dir: &std::path::Path) -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let cert =
            CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, &ca, &ca_key)?;
        let ca_file = dir.join("bench-ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        let (cert_file, key_file) = (dir.join("bench-server.crt"), dir.join("bench-server.key"));
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone())?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            ca_file,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            cert_file,
            key_file,
            client: Arc::new(client),
        })
    }
}

impl Mock {
    pub async fn start(capacity: usize, clock: Clock) -> anyhow::Result<Self> {
        Self::start_with(capacity, clock, None).await
    }

    /// With `tls`, the mock speaks HTTPS only.
    pub async fn start_with(
        capacity: usize,
        clock: Clock,
        tls: Option<&MockTls>,
    ) -> anyhow::Result<Self> {
        let acceptor = tls.map(|t| t.acceptor.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let got_at: Arc<Vec<AtomicU64>> =
            Arc::new((0..capacity).map(|_| AtomicU64::new(0)).collect());
        let received = Arc::new(AtomicU64::new(0));
        let (got, count) = (Arc::clone(&got_at), Arc::clone(&received));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (got, count) = (Arc::clone(&got), Arc::clone(&count));
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (got, count) = (Arc::clone(&got), Arc::clone(&count));
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            if let Some(slot) = index_of(&body).and_then(|i| got.get(i)) {
                                let _ = slot.compare_exchange(
                                    0,
                                    clock.micros().max(1),
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                );
                            }
                            count.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            got_at,
            received,
            https: tls.is_some(),
        })
    }

    pub fn url(&self) -> String {
        if self.https {
            format!(
                "https://localhost:{}/webhooks/checkoutdotcom",
                self.addr.port()
            )
        } else {
            format!("http://{}/webhooks/checkoutdotcom", self.addr)
        }
    }

    /// How many of the events in `range` have arrived.
    pub fn arrived(&self, range: std::ops::Range<usize>) -> usize {
        self.got_at[range]
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) != 0)
            .count()
    }
}
