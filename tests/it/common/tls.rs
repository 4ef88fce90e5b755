//! TLS made in the test: a CA, certificates it signs, an HTTPS front for a
//! mock Accelerate, and a real `CONNECT` proxy on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A certificate authority that exists only for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        Self { cert, key }
    }

    /// Writes the CA certificate as PEM into `dir`, for RELAY_ACCELERATE_CA_FILE.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("accelerate-ca.pem");
        std::fs::write(&path, self.cert.pem()).expect("write ca");
        path
    }

    /// A certificate for `names` valid until `not_after` (year, month, day),
    /// and its key, as PEM files `{stem}.crt` and `{stem}.key` in `dir`.
    /// The certificate file holds the chain: the leaf, then this CA.
    pub fn write_pair(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        not_after: (i32, u8, u8),
    ) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf cert");
        let (cert_path, key_path) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.cert.pem()))
            .expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    /// A client that trusts this CA (and keeps each connection's TLS details).
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.cert.pem().as_bytes()).expect("ca pem"),
            )
            .tls_info(true)
            .build()
            .expect("client")
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server_config(&self, names: &[&str]) -> rustls::ServerConfig {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server cert");
        let chain = vec![cert.der().clone(), self.cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config")
    }
}

/// An HTTPS front on a random port for a plain-HTTP mock on `backend_port`:
/// TLS ends here, the bytes go on unchanged.
pub struct TlsFront {
    pub port: u16,
    /// Handshakes that failed, with rustls's reason.
    pub failed: Arc<Mutex<Vec<String>>>,
}

impl TlsFront {
    pub async fn start(config: rustls::ServerConfig, backend_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tls front");
        let port = listener.local_addr().expect("addr").port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::clone(&failed);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let failures = Arc::clone(&failures);
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            failures.lock().expect("lock").push(e.to_string());
                            return;
                        }
                    };
                    let Ok(mut backend) = TcpStream::connect(("127.0.0.1", backend_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
                });
            }
        });
        Self { port, failed }
    }

    pub fn url(&self, host: &str) -> String {
        format!("https://{host}:{}/webhooks/checkoutdotcom", self.port)
    }
}

/// What a `CONNECT` proxy saw of one connection.
#[derive(Clone, Debug, Default)]
pub struct ProxySeen {
    /// The request line (`CONNECT host:port HTTP/1.1`, or an absolute-form
    /// `POST http://…` for plain HTTP).
    pub request_line: String,
    pub proxy_authorization: Option<String>,
    /// Every byte carried from the relay after the head.
    pub carried: Vec<u8>,
}

/// A forward proxy: `CONNECT` tunnels and absolute-form plain HTTP, every
/// host name resolved to 127.0.0.1 (so a test can use names no resolver
/// knows). With `refuse` set, every request is answered with it instead.
pub struct ConnectProxy {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<ProxySeen>>>,
}

impl ConnectProxy {
    pub async fn start(refuse: Option<&'static str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, refuse, Arc::clone(&log)));
            }
        });
        Self { port, seen }
    }

    pub fn seen(&self) -> Vec<ProxySeen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn serve(
    mut client: TcpStream,
    refuse: Option<&'static str>,
    log: Arc<Mutex<Vec<ProxySeen>>>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let request_line = text.lines().next().unwrap_or_default().to_owned();
    let proxy_authorization = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Proxy-Authorization: ")
                .or_else(|| l.strip_prefix("proxy-authorization: "))
        })
        .map(str::to_owned);
    let index = {
        let mut log = log.lock().expect("lock");
        log.push(ProxySeen {
            request_line: request_line.clone(),
            proxy_authorization,
            carried: Vec::new(),
        });
        log.len() - 1
    };
    if let Some(status) = refuse {
        let _ = client
            .write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        return;
    }
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let port = if method == "CONNECT" {
        target
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
    } else {
        target
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .and_then(|authority| authority.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
    };
    let Some(port) = port else { return };
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", port)).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    };
    if method == "CONNECT" {
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    } else if upstream.write_all(&head).await.is_err() {
        return;
    }
    // Carry both ways, keeping what the relay sent.
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
    });
    let mut buf = [0u8; 8192];
    loop {
        match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                log.lock().expect("lock")[index]
                    .carried
                    .extend_from_slice(&buf[..n]);
                if upstream_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    back.abort();
}
