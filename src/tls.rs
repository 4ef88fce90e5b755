//! The relay's own certificates: read from PEM files, checked, served with
//! rustls, and reloaded when the files change.
//!
//! Checkout.com posts card holder data to the relay, and the console's
//! cookie is `Secure`: a single binary on the embedded store must be able
//! to serve HTTPS without a second program in front. Certificates are
//! renewed by something else (an ACME client, cert-manager rotating a
//! mounted Secret), so the files are watched and a new pair is served to the
//! next connection without a restart; a pair that does not load is refused
//! and the one serving stays.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the files are looked at; "within a few seconds" of a renewal.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// A certificate chain file and its key file, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The variables they came from, for messages.
    pub cert_var: &'static str,
    pub key_var: &'static str,
}

/// A pair that loaded: what rustls serves and when it expires.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// The end-entity certificate's notAfter, in seconds since the epoch.
    pub not_after: i64,
    /// The files' bytes, to tell a change from the same pair read again.
    bytes: (Vec<u8>, Vec<u8>),
}

impl TlsFiles {
    /// Reads and checks the pair: both readable, a chain and a private key
    /// in PEM, the key the certificate's, the certificate not expired. Each
    /// error names the variable to fix.
    pub fn load(&self) -> Result<Loaded, String> {
        let read = |path: &Path, var: &str| {
            std::fs::read(path)
                .map_err(|e| format!("{var}: could not read {}: {e}", path.display()))
        };
        let bytes = (
            read(&self.cert, self.cert_var)?,
            read(&self.key, self.key_var)?,
        );
        self.load_bytes(bytes)
    }

    fn load_bytes(&self, bytes: (Vec<u8>, Vec<u8>)) -> Result<Loaded, String> {
        let (cert_var, key_var) = (self.cert_var, self.key_var);
        let chain = CertificateDer::pem_slice_iter(&bytes.0)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{cert_var}: {} is not PEM: {e}", self.cert.display()))?;
        let Some(leaf) = chain.first() else {
            return Err(format!(
                "{cert_var}: {} holds no certificate (-----BEGIN CERTIFICATE-----)",
                self.cert.display()
            ));
        };
        let key = PrivateKeyDer::from_pem_slice(&bytes.1).map_err(|e| {
            format!(
                "{key_var}: {} holds no private key in PEM (PKCS#8, PKCS#1 or SEC1): {e}",
                self.key.display()
            )
        })?;
        let (not_before, not_after) = validity(leaf).map_err(|e| {
            format!(
                "{cert_var}: the first certificate of {} does not parse: {e}",
                self.cert.display()
            )
        })?;
        let now = unix_now();
        if not_after <= now {
            return Err(format!(
                "{cert_var}: the certificate in {} expired {}; renew it",
                self.cert.display(),
                httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64))
            ));
        }
        if not_before > now {
            return Err(format!(
                "{cert_var}: the certificate in {} is not valid before {}",
                self.cert.display(),
                httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(not_before as u64))
            ));
        }
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider.key_provider.load_private_key(key).map_err(|e| {
            format!(
                "{key_var}: the key in {} cannot be used: {e}",
                self.key.display()
            )
        })?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| {
            format!(
                "{key_var}: the key in {} is not the key of the certificate in {} ({e}); \
                 point both variables at one pair",
                self.key.display(),
                self.cert.display()
            )
        })?;
        Ok(Loaded {
            key: Arc::new(certified),
            not_after,
            bytes,
        })
    }
}

/// The notAfter and notBefore of a DER certificate, in seconds since the epoch.
fn validity(cert: &CertificateDer<'_>) -> Result<(i64, i64), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    let v = parsed.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The pair being served; swapped by [`Certificates::reload`], read by
/// every handshake.
pub struct Certificates {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    bytes: RwLock<(Vec<u8>, Vec<u8>)>,
    not_after: AtomicI64,
    /// Each listener's expiry gauge, set whenever a pair is loaded.
    gauges: std::sync::Mutex<Vec<metrics::Gauge>>,
    /// A changed pair that did not load at the last look.
    suspect: std::sync::Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

impl Certificates {
    pub fn new(files: TlsFiles, loaded: Loaded) -> Self {
        Self {
            files,
            current: RwLock::new(loaded.key),
            bytes: RwLock::new(loaded.bytes),
            not_after: AtomicI64::new(loaded.not_after),
            gauges: std::sync::Mutex::default(),
            suspect: std::sync::Mutex::default(),
        }
    }

    /// Keeps `gauge` at the served certificate's expiry.
    pub fn report_to(&self, gauge: metrics::Gauge) {
        gauge.set(self.not_after() as f64);
        self.gauges.lock().expect("tls lock").push(gauge);
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// When the certificate being served expires (seconds since the epoch).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// Reads the files again; when they changed, serves the new pair if it
    /// loads. `Ok(true)` when a new pair is served; `Err` when the files
    /// changed to a pair that does not load (the old one keeps serving;
    /// the same bad pair is not reported twice).
    pub fn reload(&self) -> Result<bool, String> {
        let read = |path: &Path| std::fs::read(path);
        let (Ok(cert), Ok(key)) = (read(&self.files.cert), read(&self.files.key)) else {
            // Mid-swap (one file renamed before the other) or gone: the next
            // look decides; what serves keeps serving.
            return Ok(false);
        };
        let bytes = (cert, key);
        if *self.bytes.read().expect("tls lock") == bytes {
            return Ok(false);
        }
        let loaded = match self.files.load_bytes(bytes.clone()) {
            Ok(loaded) => loaded,
            Err(e) => {
                // A renewal that writes the two files one after the other
                // (certbot's symlinks) is seen half done once: a pair only
                // counts as broken when the next look finds it unchanged.
                let mut suspect = self.suspect.lock().expect("tls lock");
                if suspect.as_ref() != Some(&bytes) {
                    *suspect = Some(bytes);
                    return Ok(false);
                }
                *suspect = None;
                // Remembered, so the same bad pair is reported once.
                *self.bytes.write().expect("tls lock") = bytes;
                return Err(e);
            }
        };
        *self.suspect.lock().expect("tls lock") = None;
        *self.bytes.write().expect("tls lock") = bytes;
        *self.current.write().expect("tls lock") = loaded.key;
        self.not_after.store(loaded.not_after, Ordering::Relaxed);
        for gauge in self.gauges.lock().expect("tls lock").iter() {
            gauge.set(loaded.not_after as f64);
        }
        Ok(true)
    }

    /// rustls's configuration for a listener serving these certificates:
    /// TLS 1.2 and 1.3, HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Looks at the files every [`RELOAD_EVERY`] until `stop`.
    pub async fn watch(
        self: Arc<Self>,
        listener: &'static str,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let this = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || this.reload()).await {
                Ok(Ok(true)) => tracing::info!(
                    listener,
                    not_after = %httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(self.not_after().max(0) as u64)),
                    "TLS certificate reloaded; new connections get it"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!(
                    listener, error = %e,
                    "the changed TLS certificate files do not load; the previous certificate is still served"
                ),
                Err(e) => tracing::error!(listener, error = %e, "TLS certificate reload failed"),
            }
        }
    }
}

/// The files only: the key's bytes are never printed.
impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .finish()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().expect("tls lock")))
    }
}

/// Asks `GET /healthz` of a local listener that serves the certificate in
/// `cert_file`, trusting exactly that certificate (whatever names it has, and
/// whoever issued it: the probe only needs to know it talks to this relay).
/// Returns the status code.
pub async fn probe_healthz(addr: std::net::SocketAddr, cert_file: &Path) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pem = std::fs::read(cert_file).map_err(|e| {
        format!(
            "RELAY_TLS_CERT: could not read {}: {e}",
            cert_file.display()
        )
    })?;
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| {
            format!(
                "RELAY_TLS_CERT: {} holds no certificate",
                cert_file.display()
            )
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(ThisCertificate {
        leaf,
        algorithms: provider.signature_verification_algorithms,
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&answer) {
            Ok(_) => response.code.ok_or_else(|| "no status line".to_owned()),
            Err(e) => Err(format!("not an HTTP answer: {e}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .map_err(|_| "no answer within 3 s".to_owned())?
}

/// Trusts one certificate, by its bytes; signatures are still checked.
#[derive(Debug)]
struct ThisCertificate {
    leaf: CertificateDer<'static>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for ThisCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the listener serves another certificate than RELAY_TLS_CERT's".to_owned(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
