//! The relay serving HTTPS itself from certificate files (RELAY_TLS_CERT,
//! RELAY_TLS_KEY) made in the test: webhooks over TLS, renewal by swapping
//! the files without a restart, the start-up refusals, and the CLI's
//! healthcheck and replay against it. The store is not involved: SQLite.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::tls::TestCa;
use common::*;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);
/// The relay looks at the files every 2 s: a renewal shows within this.
const RENEWAL: Duration = Duration::from_secs(6);

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The end-entity certificate a new connection to `url` is served.
async fn served(client: &reqwest::Client, url: &str) -> Vec<u8> {
    let response = client.get(url).send().await.expect("https answer");
    assert_eq!(response.status(), 200, "{url}");
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("peer certificate")
        .to_vec()
}

/// The first certificate of a PEM file, as DER.
fn leaf_der(cert_file: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(cert_file)
        .expect("pem")
        .next()
        .expect("one certificate")
        .expect("der")
        .to_vec()
}

/// A signed webhook over HTTPS is accepted and delivered; the expiry metric
/// shows the certificate's notAfter; plain HTTP to the port gets no HTTP
/// answer and stores nothing; TLS 1.2 is served as well as 1.3.
#[tokio::test]
async fn a_webhook_over_https_is_accepted_and_delivered() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("relay CA");
    let (cert, key) = ca.write_pair(dir.path(), "relay", &["localhost"], (2031, 6, 1));
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("RELAY_TLS_CERT", path(&cert)),
            ("RELAY_TLS_KEY", path(&key)),
        ],
    )
    .await;
    let base = format!("https://localhost:{}", app.port());
    let client = ca.client();
    let body = fixture("payment_approved.json");
    let (status, accepted) = answer(
        post_signed(&client, &base, "sandbox", body.clone())
            .await
            .expect("https answer"),
    )
    .await;
    assert_eq!(
        (status, accepted["status"].as_str()),
        (200, Some("accepted")),
        "{accepted}"
    );
    let got = app.sandbox.wait_for(1, WAIT).await;
    assert_eq!(got[0].body, body, "forwarded byte for byte");

    let tls12 = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).expect("pem")).expect("cert"),
        )
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .expect("client");
    let healthz = tls12
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("TLS 1.2");
    assert_eq!(healthz.status(), 200);

    let metrics = get_text(&client, &format!("{base}/metrics")).await;
    // 2031-06-01T00:00:00Z
    assert!(
        metrics.contains(
            "accelerate_relay_tls_certificate_expiry_timestamp_seconds{listener=\"webhooks\"} 1938038400\n"
        ),
        "{metrics}"
    );

    // Plain HTTP to the TLS port: the handshake fails, nothing is answered
    // in HTTP and nothing is stored.
    let plain = approved_event("evt_plain");
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.port()))
        .await
        .expect("connect");
    let request = format!(
        "POST /webhooks/checkoutdotcom/sandbox HTTP/1.1\r\nHost: relay\r\nAuthorization: {SANDBOX_AUTH}\r\nCko-Signature: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        sign(SANDBOX_SIG, &plain),
        plain.len()
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    tcp.write_all(&plain).await.expect("write");
    let mut answer_bytes = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer_bytes)).await;
    assert!(!answer_bytes.starts_with(b"HTTP/"), "{answer_bytes:?}");
    assert_eq!(app.status_on_disk("evt_plain").await, None);
    app.stop().await;
}

/// Renewal: the files are swapped the way cert-manager swaps a mounted
/// Secret (a symlinked directory replaced at once). The next connection gets
/// the new certificate within seconds, a connection opened before finishes
/// its request, and a swap to a pair that does not match is refused: the
/// previous certificate keeps being served and its expiry stays on /metrics.
#[tokio::test]
async fn renewed_files_are_served_without_a_restart_and_a_broken_pair_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("relay CA");
    let version = |name: &str, not_after| -> PathBuf {
        let v = dir.path().join(name);
        std::fs::create_dir(&v).expect("dir");
        ca.write_pair(&v, "tls", &["localhost"], not_after);
        v
    };
    let v1 = version("v1", (2030, 1, 1));
    let v2 = version("v2", (2031, 1, 1));
    let live = dir.path().join("live");
    let point_live_at = |target: &Path| {
        let next = dir.path().join("live.next");
        let _ = std::fs::remove_file(&next);
        std::os::unix::fs::symlink(target, &next).expect("symlink");
        std::fs::rename(&next, &live).expect("swap");
    };
    point_live_at(&v1);
    let (cert, key) = (live.join("tls.crt"), live.join("tls.key"));
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("RELAY_TLS_CERT", path(&cert)),
            ("RELAY_TLS_KEY", path(&key)),
        ],
    )
    .await;
    let port = app.port();
    let healthz = format!("https://localhost:{port}/healthz");
    assert_eq!(
        served(&ca.client(), &healthz).await,
        leaf_der(&v1.join("tls.crt"))
    );

    // A connection in flight: handshake done on v1, the request half sent.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(v1.join("tls.crt")).expect("pem") {
        let _ = roots.add(c.expect("der"));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut in_flight = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("handshake on v1");
    let body = approved_event("evt_in_flight");
    let head = format!(
        "POST /webhooks/checkoutdotcom/sandbox HTTP/1.1\r\nHost: localhost\r\nAuthorization: {SANDBOX_AUTH}\r\nCko-Signature: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        sign(SANDBOX_SIG, &body),
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.expect("head");
    in_flight
        .write_all(&body[..10])
        .await
        .expect("part of the body");

    point_live_at(&v2);
    let v2_leaf = leaf_der(&v2.join("tls.crt"));
    let renewed = eventually(RENEWAL, || async {
        served(&ca.client(), &healthz).await == v2_leaf
    })
    .await;
    assert!(
        renewed,
        "the new certificate is not served within {RENEWAL:?}"
    );

    in_flight
        .write_all(&body[10..])
        .await
        .expect("rest of the body");
    let mut answer_bytes = Vec::new();
    let _ = tokio::time::timeout(WAIT, in_flight.read_to_end(&mut answer_bytes)).await;
    let answer_text = String::from_utf8_lossy(&answer_bytes);
    assert!(
        answer_text.starts_with("HTTP/1.1 200 OK") && answer_text.contains("\"accepted\""),
        "{answer_text}"
    );

    // A broken pair: v3's certificate with v1's key.
    let v3 = version("v3", (2032, 1, 1));
    std::fs::copy(v1.join("tls.key"), v3.join("tls.key")).expect("mismatched key");
    point_live_at(&v3);
    tokio::time::sleep(RENEWAL).await;
    assert_eq!(
        served(&ca.client(), &healthz).await,
        v2_leaf,
        "the old pair keeps serving"
    );
    let metrics = get_text(&ca.client(), &format!("https://localhost:{port}/metrics")).await;
    // 2031-01-01T00:00:00Z: v2's, not v3's.
    assert!(
        metrics.contains(
            "accelerate_relay_tls_certificate_expiry_timestamp_seconds{listener=\"webhooks\"} 1924992000\n"
        ),
        "{metrics}"
    );
    app.stop().await;
}

/// The admin listener serves the webhook port's pair by default, or its
/// own with RELAY_ADMIN_TLS_*.
#[tokio::test]
async fn the_admin_listener_serves_https_too() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("relay CA");
    let (cert, key) = ca.write_pair(dir.path(), "webhooks", &["localhost"], (2031, 6, 1));
    let (admin_cert, admin_key) = ca.write_pair(dir.path(), "admin", &["localhost"], (2031, 6, 1));
    let tls = [
        ("RELAY_TLS_CERT", path(&cert)),
        ("RELAY_TLS_KEY", path(&key)),
    ];
    let mut vars = tls.to_vec();
    vars.push(("RELAY_ADMIN_LISTEN", "127.0.0.1:0"));
    let app = TestApp::spawn_with(Backend::Sqlite, &vars).await;
    let admin = app
        .admin_address
        .clone()
        .expect("admin")
        .replace("http://127.0.0.1", "https://localhost");
    assert_eq!(
        served(&ca.client(), &format!("{admin}/metrics")).await,
        leaf_der(&cert)
    );
    app.stop().await;

    vars.push(("RELAY_ADMIN_TLS_CERT", path(&admin_cert)));
    vars.push(("RELAY_ADMIN_TLS_KEY", path(&admin_key)));
    let app = TestApp::spawn_with(Backend::Sqlite, &vars).await;
    let admin = app
        .admin_address
        .clone()
        .expect("admin")
        .replace("http://127.0.0.1", "https://localhost");
    assert_eq!(
        served(&ca.client(), &format!("{admin}/metrics")).await,
        leaf_der(&admin_cert)
    );
    let webhooks = format!("https://localhost:{}/healthz", app.port());
    assert_eq!(served(&ca.client(), &webhooks).await, leaf_der(&cert));
    app.stop().await;
}

/// What cannot be served stops start-up with the variable named.
#[test]
fn certificate_settings_that_cannot_work_stop_start_up() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("relay CA");
    let (cert, key) = ca.write_pair(dir.path(), "good", &["localhost"], (2031, 6, 1));
    let (other_cert, _) = ca.write_pair(dir.path(), "other", &["localhost"], (2031, 6, 1));
    let (expired, expired_key) = ca.write_pair(dir.path(), "expired", &["localhost"], (2021, 1, 1));
    let missing = dir.path().join("missing.crt");
    let error = config_error;
    let e = error(&[("RELAY_TLS_CERT", path(&cert))]);
    assert!(
        e.starts_with("RELAY_TLS_KEY: RELAY_TLS_CERT is set but RELAY_TLS_KEY is not"),
        "{e}"
    );
    let e = error(&[("RELAY_TLS_KEY", path(&key))]);
    assert!(
        e.starts_with("RELAY_TLS_CERT: RELAY_TLS_KEY is set but"),
        "{e}"
    );
    let e = error(&[
        ("RELAY_TLS_CERT", path(&missing)),
        ("RELAY_TLS_KEY", path(&key)),
    ]);
    assert!(e.starts_with("RELAY_TLS_CERT: could not read"), "{e}");
    let e = error(&[
        ("RELAY_TLS_CERT", path(&other_cert)),
        ("RELAY_TLS_KEY", path(&key)),
    ]);
    assert!(
        e.starts_with("RELAY_TLS_KEY: the key in")
            && e.contains("is not the key of the certificate"),
        "{e}"
    );
    let e = error(&[
        ("RELAY_TLS_CERT", path(&expired)),
        ("RELAY_TLS_KEY", path(&expired_key)),
    ]);
    assert!(
        e.starts_with("RELAY_TLS_CERT: the certificate in") && e.contains("expired"),
        "{e}"
    );
    let e = error(&[
        ("RELAY_TLS_CERT", path(&key)),
        ("RELAY_TLS_KEY", path(&key)),
    ]);
    assert!(
        e.starts_with("RELAY_TLS_CERT: ") && e.contains("no certificate"),
        "{e}"
    );
    let e = error(&[
        ("RELAY_ADMIN_TLS_CERT", path(&cert)),
        ("RELAY_ADMIN_TLS_KEY", path(&key)),
    ]);
    assert!(
        e.starts_with("RELAY_ADMIN_TLS_CERT: is set but RELAY_ADMIN_LISTEN is not"),
        "{e}"
    );
}

/// `healthcheck` probes a TLS listener over TLS (trusting the configured
/// certificate, whatever its name), and `replay --ca-file` posts to it.
#[tokio::test]
async fn healthcheck_and_replay_speak_https() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("relay CA");
    // A name that is not localhost, as a real certificate's would be.
    let (cert, key) = ca.write_pair(
        dir.path(),
        "relay",
        &["relay.example.com", "localhost"],
        (2031, 6, 1),
    );
    let ca_file = ca.write_pem(dir.path());
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("RELAY_TLS_CERT", path(&cert)),
            ("RELAY_TLS_KEY", path(&key)),
        ],
    )
    .await;
    let listen = format!("0.0.0.0:{}", app.port());
    let run = |args: Vec<String>, vars: Vec<(&'static str, String)>| async move {
        tokio::process::Command::new(process::BINARY)
            .args(args)
            .env_clear()
            .envs(vars)
            .output()
            .await
            .expect("run the binary")
    };
    let ok = run(
        vec!["healthcheck".into()],
        vec![
            ("RELAY_LISTEN", listen.clone()),
            ("RELAY_TLS_CERT", path(&cert).into()),
        ],
    )
    .await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let plain = run(
        vec!["healthcheck".into()],
        vec![("RELAY_LISTEN", listen.clone())],
    )
    .await;
    assert!(
        !plain.status.success(),
        "plain HTTP to a TLS port must fail"
    );

    let event = dir.path().join("event.json");
    std::fs::write(&event, approved_event("evt_replayed_tls")).expect("write");
    let replayed = run(
        vec![
            "replay".into(),
            "--url".into(),
            format!(
                "https://localhost:{}/webhooks/checkoutdotcom/sandbox",
                app.port()
            ),
            "--authorization".into(),
            SANDBOX_AUTH.into(),
            "--signature-key".into(),
            SANDBOX_SIG.into(),
            "--ca-file".into(),
            path(&ca_file).into(),
            path(&event).into(),
        ],
        vec![],
    )
    .await;
    let out = String::from_utf8_lossy(&replayed.stdout);
    assert!(
        replayed.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert!(out.contains(" 200 ") && out.contains("accepted"), "{out}");
    app.sandbox
        .wait_until(WAIT, |r| r.event_id() == "evt_replayed_tls")
        .await;
    app.stop().await;
}

/// The binary, as an operator runs it: a renewal to a pair that does not
/// match is logged once at `error`, naming the variable, with no key in it.
#[tokio::test]
async fn a_broken_renewal_is_logged_once_at_error() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("relay CA");
    let (cert, key) = ca.write_pair(dir.path(), "relay", &["localhost"], (2031, 6, 1));
    let port = process::free_port();
    let log_path = dir.path().join("relay.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = tokio::process::Command::new(process::BINARY)
        .env_clear()
        .envs([
            ("RELAY_LISTEN", format!("127.0.0.1:{port}")),
            (
                "RELAY_DATABASE_URL",
                format!("sqlite://{}", dir.path().join("relay.db").display()),
            ),
            ("CKO_SANDBOX_AUTHORIZATION_KEY", SANDBOX_AUTH.to_owned()),
            ("CKO_SANDBOX_SIGNATURE_KEY", SANDBOX_SIG.to_owned()),
            ("RELAY_TLS_CERT", path(&cert).to_owned()),
            ("RELAY_TLS_KEY", path(&key).to_owned()),
        ])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start the relay");
    let client = ca.client();
    let healthz = format!("https://localhost:{port}/healthz");
    let up = eventually(WAIT, || async {
        client
            .get(&healthz)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(up, "the relay did not come up over HTTPS");

    // Another certificate over the same file, with the old key.
    let (other, _) = ca.write_pair(dir.path(), "other", &["localhost"], (2031, 6, 1));
    std::fs::copy(&other, &cert).expect("replace the certificate");
    tokio::time::sleep(RENEWAL + Duration::from_secs(2)).await;
    assert_eq!(
        client
            .get(&healthz)
            .send()
            .await
            .expect("still served")
            .status(),
        200
    );
    let _ = child.kill().await;

    let log = std::fs::read_to_string(&log_path).expect("log");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("the previous certificate is still served")
            && errors[0].contains("RELAY_TLS_KEY: the key in")
            && errors[0].contains("is not the key of the certificate"),
        "{}",
        errors[0]
    );
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}
