//! The way out to Accelerate as production networks have it: HTTPS with a
//! certificate from a CA made in the test, trusted through
//! RELAY_ACCELERATE_CA_FILE, and a real CONNECT proxy on 127.0.0.1. The store
//! is not involved, so these run on SQLite only; the admin API shows the
//! outcomes.

use crate::common;

use std::time::Duration;

use accelerate_relay::config::Config;
use common::tls::{ConnectProxy, TestCa, TlsFront};
use common::*;
use serde_json::Value;

const TOKEN: &str = "admin-token-0123456789abcdef0123456789";
const WAIT: Duration = Duration::from_secs(10);

/// A relay whose sandbox Accelerate is `url`, with the admin API on and
/// `extra` variables; retries are quick.
async fn relay(url: &str, extra: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![
        ("ACCELERATE_SANDBOX_URL", url),
        ("RELAY_ADMIN_TOKEN", TOKEN),
        ("RELAY_RETRY_SCHEDULE", "200ms,200ms"),
    ];
    vars.extend_from_slice(extra);
    TestApp::spawn_with(Backend::Sqlite, &vars).await
}

/// Sends one event and returns its delivery id.
async fn send(app: &TestApp, event_id: &str) -> String {
    let (status, accepted) = app.send_json("sandbox", approved_event(event_id)).await;
    assert_eq!(status, 200, "{accepted}");
    accepted["delivery_id"]
        .as_str()
        .expect("delivery id")
        .to_owned()
}

/// The delivery as the admin API shows it, once it has `n` attempts.
async fn shown_after(app: &TestApp, id: &str, n: usize) -> Value {
    let base = app.admin_address.as_deref().unwrap_or(&app.address);
    let mut shown = Value::Null;
    for _ in 0..200 {
        let response = app
            .client
            .get(format!("{base}/admin/deliveries/{id}"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
            .await
            .expect("admin API");
        shown = answer(response).await.1;
        if shown["attempt_history"].as_array().map_or(0, Vec::len) >= n {
            return shown;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id}: {n} attempts expected, shown {shown}");
}

/// Each attempt's outcome and message, as the admin API lists them.
fn history(shown: &Value) -> Vec<(String, String)> {
    shown["attempt_history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap_or_default().to_owned(),
                a["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// `accelerate_relay_delivery_attempts_total` for the sandbox and `outcome`.
fn attempts_metric(metrics: &str, outcome: &str) -> u64 {
    let line = format!(
        "accelerate_relay_delivery_attempts_total{{environment=\"sandbox\",outcome=\"{outcome}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line} not in /metrics:\n{metrics}"))
}

/// Over HTTPS to a certificate of a private CA: every fixture arrives byte
/// for byte with its headers, the host name checked against the
/// certificate; a second event reuses the TLS connection.
#[tokio::test]
async fn delivered_over_https_with_a_private_ca_byte_for_byte() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("Accelerate staging CA");
    let ca_file = ca.write_pem(dir.path());
    let mock = MockAccelerate::start().await;
    let front = TlsFront::start(ca.server_config(&["localhost"]), mock.port()).await;
    let app = relay(
        &front.url("localhost"),
        &[("RELAY_ACCELERATE_CA_FILE", ca_file.to_str().expect("path"))],
    )
    .await;

    let fixtures: Vec<_> = RELAYED
        .iter()
        .filter(|(_, env)| *env == "sandbox")
        .collect();
    for (name, _) in &fixtures {
        let body = fixture(name);
        let (status, answer) = answer(app.send("sandbox", body).await).await;
        assert_eq!(status, 200, "{name}: {answer}");
    }
    let received = mock.wait_for(fixtures.len(), WAIT).await;
    for (name, _) in &fixtures {
        let body = fixture(name);
        let got = received
            .iter()
            .find(|r| r.body == body)
            .unwrap_or_else(|| panic!("{name} did not arrive byte for byte"));
        assert_eq!(got.header_str("authorization"), Some(SANDBOX_AUTH));
        assert_eq!(
            got.header_str("cko-signature"),
            Some(sign(SANDBOX_SIG, &body).as_str())
        );
        assert_eq!(got.header_str("content-type"), Some("application/json"));
        assert!(got.header_str("x-relay-delivery-id").is_some());
        assert_eq!(got.header_str("x-relay-attempt"), Some("1"));
        assert!(got
            .header_str("user-agent")
            .is_some_and(|ua| ua.starts_with("accelerate-relay/")));
    }
    assert!(front.failed.lock().expect("lock").is_empty());
    app.stop().await;
}

/// Without the CA the handshake fails: a `tls` attempt (history, metric)
/// that says what to check, retried like any failure, and nothing sent.
/// With the certificate on another name, the same.
#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_is_a_tls_attempt() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("Accelerate staging CA");
    let mock = MockAccelerate::start().await;
    let front = TlsFront::start(ca.server_config(&["localhost"]), mock.port()).await;

    let app = relay(&front.url("localhost"), &[]).await;
    let id = send(&app, "evt_untrusted").await;
    assert!(app.reaches_status("evt_untrusted", "dead", WAIT).await);
    let shown = shown_after(&app, &id, 3).await;
    assert_eq!(shown["status"], "dead", "{shown}");
    for (outcome, message) in history(&shown) {
        assert_eq!(outcome, "tls", "{message}");
        assert!(
            message.contains("UnknownIssuer") && message.contains("RELAY_ACCELERATE_CA_FILE"),
            "{message}"
        );
    }
    assert_eq!(attempts_metric(&app.metrics_text().await, "tls"), 3);
    app.stop().await;

    // Trusted CA, wrong name: the certificate is for localhost, the URL
    // says 127.0.0.1.
    let ca_file = ca.write_pem(dir.path());
    let app = relay(
        &front.url("127.0.0.1"),
        &[("RELAY_ACCELERATE_CA_FILE", ca_file.to_str().expect("path"))],
    )
    .await;
    let id = send(&app, "evt_misnamed").await;
    let (outcome, message) = history(&shown_after(&app, &id, 1).await).remove(0);
    assert_eq!(outcome, "tls", "{message}");
    assert!(
        message.contains("not valid for name \"127.0.0.1\""),
        "{message}"
    );
    app.stop().await;

    assert!(mock.received().is_empty(), "nothing reached Accelerate");
    assert!(!front.failed.lock().expect("lock").is_empty());
}

/// Through a CONNECT proxy with credentials (lower-case `https_proxy`, as
/// curl reads it): the proxy sees the tunnel's host and port, never the
/// body; the host name is verified end to end. `NO_PROXY` bypasses it.
#[tokio::test]
async fn https_goes_through_a_connect_proxy_unless_no_proxy_says_not() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("Accelerate staging CA");
    let ca_file = ca.write_pem(dir.path());
    let mock = MockAccelerate::start().await;
    // A name only the proxy resolves: the relay never looks it up itself.
    let front = TlsFront::start(
        ca.server_config(&["accelerate.test", "localhost"]),
        mock.port(),
    )
    .await;
    let proxy = ConnectProxy::start(None).await;
    let proxy_url = format!("http://relay:pa%3Ass@127.0.0.1:{}", proxy.port);
    let ca_var = ("RELAY_ACCELERATE_CA_FILE", ca_file.to_str().expect("path"));

    let app = relay(
        &front.url("accelerate.test"),
        &[ca_var, ("https_proxy", &proxy_url)],
    )
    .await;
    send(&app, "evt_tunnel_1").await;
    // Delivered: its connection is idle in the pool for the next one.
    assert!(app.reaches_status("evt_tunnel_1", "delivered", WAIT).await);
    send(&app, "evt_tunnel_2").await;
    let received = mock.wait_for(2, WAIT).await;
    assert_eq!(received[0].body, approved_event("evt_tunnel_1"));
    assert_eq!(received[1].header_str("authorization"), Some(SANDBOX_AUTH));
    let seen = proxy.seen();
    let lines: Vec<_> = seen.iter().map(|s| &s.request_line).collect();
    assert_eq!(seen.len(), 1, "one tunnel, kept alive: {lines:?}");
    assert_eq!(
        seen[0].request_line,
        format!("CONNECT accelerate.test:{} HTTP/1.1", front.port)
    );
    // relay:pa:ss, with the colon percent-encoded in the URL.
    assert_eq!(
        seen[0].proxy_authorization.as_deref(),
        Some("Basic cmVsYXk6cGE6c3M=")
    );
    let carried = &seen[0].carried;
    assert!(carried.len() > 1000, "the tunnel carried TLS");
    for needle in [&b"evt_tunnel_1"[..], SANDBOX_AUTH.as_bytes(), b"POST"] {
        assert!(
            !carried.windows(needle.len()).any(|w| w == needle),
            "the proxy saw {:?} in clear",
            String::from_utf8_lossy(needle)
        );
    }
    app.stop().await;

    let app = relay(
        &front.url("localhost"),
        &[
            ca_var,
            ("HTTPS_PROXY", &proxy_url),
            ("NO_PROXY", "example.org, localhost"),
        ],
    )
    .await;
    send(&app, "evt_bypass").await;
    mock.wait_until(WAIT, |r| r.event_id() == "evt_bypass")
        .await;
    assert_eq!(proxy.seen().len(), 1, "NO_PROXY: the proxy saw nothing new");
    app.stop().await;
}

/// Plain HTTP through `HTTP_PROXY` goes in absolute form with the proxy's
/// credentials, as a forward proxy expects.
#[tokio::test]
async fn plain_http_goes_to_the_proxy_in_absolute_form() {
    let proxy = ConnectProxy::start(None).await;
    let mock = MockAccelerate::start().await;
    let url = format!(
        "http://accelerate.test:{}/webhooks/checkoutdotcom",
        mock.port()
    );
    let proxy_url = format!("http://relay:secret@127.0.0.1:{}", proxy.port);
    let app = relay(&url, &[("HTTP_PROXY", &proxy_url)]).await;
    send(&app, "evt_absolute").await;
    let got = mock
        .wait_until(WAIT, |r| r.event_id() == "evt_absolute")
        .await;
    assert_eq!(got.body, approved_event("evt_absolute"));
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].request_line, format!("POST {url} HTTP/1.1"));
    assert_eq!(
        seen[0].proxy_authorization.as_deref(),
        Some("Basic cmVsYXk6c2VjcmV0")
    );
    app.stop().await;
}

/// A proxy that refuses the tunnel, or is not there, is a `proxy` attempt
/// naming the proxy (never its password) and what to check; retried.
#[tokio::test]
async fn a_refusing_or_absent_proxy_is_a_proxy_attempt() {
    let proxy = ConnectProxy::start(Some("403 Forbidden")).await;
    let url = "https://sbx.api.weaccelerate.com/webhooks/checkoutdotcom";
    let proxy_url = format!("http://relay:hunter2@127.0.0.1:{}", proxy.port);
    let app = relay(url, &[("HTTPS_PROXY", &proxy_url)]).await;
    let id = send(&app, "evt_refused").await;
    let shown = shown_after(&app, &id, 2).await;
    let (outcome, message) = history(&shown).remove(0);
    assert_eq!(outcome, "proxy", "{message}");
    assert_eq!(
        message,
        format!(
            "the proxy http://relay:***@127.0.0.1:{} refused a tunnel to sbx.api.weaccelerate.com:443: \
             it answered 403 Forbidden; check that it allows CONNECT to sbx.api.weaccelerate.com:443, \
             and the credentials in HTTPS_PROXY",
            proxy.port
        )
    );
    assert_eq!(history(&shown)[1].0, "proxy", "retried: {shown}");
    assert!(attempts_metric(&app.metrics_text().await, "proxy") >= 2);
    assert!(proxy.seen()[0]
        .request_line
        .starts_with("CONNECT sbx.api.weaccelerate.com:443 "));
    app.stop().await;

    let closed = process::ClosedPort::new();
    let app = relay(
        url,
        &[(
            "HTTPS_PROXY",
            &format!("http://127.0.0.1:{}", closed.port()),
        )],
    )
    .await;
    let id = send(&app, "evt_no_proxy_there").await;
    let (outcome, message) = history(&shown_after(&app, &id, 1).await).remove(0);
    assert_eq!(outcome, "proxy", "{message}");
    assert!(
        message.starts_with(&format!(
            "could not connect to the proxy http://127.0.0.1:{} (HTTPS_PROXY): ",
            closed.port()
        )) && message.contains("refused"),
        "{message}"
    );
    app.stop().await;
}

/// What cannot work stops start-up with the variable named: a CA file that
/// is missing or holds no certificate, a proxy that is not an HTTP proxy, two
/// spellings of one variable that disagree. No password is echoed.
#[test]
fn egress_settings_that_cannot_work_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "just text\n").expect("write");
    let error = config_error;
    let missing = dir.path().join("missing.pem");
    let e = error(&[("RELAY_ACCELERATE_CA_FILE", missing.to_str().expect("path"))]);
    assert!(
        e.starts_with("RELAY_ACCELERATE_CA_FILE: could not read") && e.contains("PEM"),
        "{e}"
    );
    let e = error(&[("RELAY_ACCELERATE_CA_FILE", not_pem.to_str().expect("path"))]);
    assert!(e.contains("holds no PEM certificate"), "{e}");
    let e = error(&[("HTTPS_PROXY", "socks5://user:hunter2@proxy:1080")]);
    assert!(
        e.starts_with("HTTPS_PROXY: ")
            && e.contains("only an HTTP proxy")
            && !e.contains("hunter2"),
        "{e}"
    );
    let e = error(&[
        ("HTTPS_PROXY", "http://a:3128"),
        ("https_proxy", "http://b:3128"),
    ]);
    assert!(e.contains("both set"), "{e}");
    let e = error(&[("HTTP_PROXY", "http://user:hunter2@:3128")]);
    assert!(
        e.starts_with("HTTP_PROXY: ") && !e.contains("hunter2"),
        "{e}"
    );

    // The same value in both spellings is one setting.
    let vars = [
        ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
        ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
        ("HTTPS_PROXY", "proxy:3128"),
        ("https_proxy", "proxy:3128"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let config = Config::from_vars(vars).expect("accepted");
    assert_eq!(
        config.proxies.https.expect("set").shown(),
        "http://proxy:3128"
    );
}

/// `check-config` shows how each environment's deliveries leave and what is
/// trusted, the proxy's password masked.
#[test]
fn check_config_shows_the_proxy_per_environment_masked() {
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = TestCa::new("Inspection CA").write_pem(dir.path());
    let out = std::process::Command::new(process::BINARY)
        .arg("check-config")
        .env_clear()
        .envs([
            ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
            ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
            ("CKO_PRODUCTION_AUTHORIZATION_KEY", "a"),
            ("CKO_PRODUCTION_SIGNATURE_KEY", "s"),
            ("HTTPS_PROXY", "http://relay:hunter2@egress.internal:3128"),
            ("NO_PROXY", "sbx.api.weaccelerate.com"),
            ("RELAY_ACCELERATE_CA_FILE", ca_file.to_str().expect("path")),
        ])
        .output()
        .expect("run the binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
    let sandbox = stdout
        .find("environment:          sandbox")
        .expect("sandbox");
    let production = stdout
        .find("environment:          production")
        .expect("production");
    assert!(
        stdout[sandbox..production].contains("  leaves:             direct (NO_PROXY)\n"),
        "{stdout}"
    );
    assert!(
        stdout[production..].contains(
            "  leaves:             through the proxy http://relay:***@egress.internal:3128 (HTTPS_PROXY)\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "TLS trust:            bundled roots and 1 certificate(s) from {} (RELAY_ACCELERATE_CA_FILE)\n",
            ca_file.display()
        )),
        "{stdout}"
    );
}
