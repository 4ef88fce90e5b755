//! The operator's surface over the real server: the admin API behind its
//! bearer token, on its own listener or the webhook port, and `/metrics`.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "admin-token-0123456789abcdef0123456789";
const WAIT: Duration = Duration::from_secs(10);

async fn admin(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let base = app.admin_address.as_deref().unwrap_or(&app.address);
    let url = format!("{base}{path}");
    let mut request = match method {
        "POST" => app.client.post(url),
        _ => app.client.get(url),
    };
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    answer(request.send().await.expect("the admin API answers")).await
}

async fn get_status(app: &TestApp, base: &str, path: &str) -> u16 {
    app.client
        .get(format!("{base}{path}"))
        .send()
        .await
        .expect("answer")
        .status()
        .as_u16()
}

async fn admin_api_is_off_without_a_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = admin(&app, "GET", "/admin/deliveries", Some(TOKEN)).await;
    assert_eq!((status, body), (404, json!({"error": "not_found"})));
    app.stop().await;
}

async fn admin_api_needs_the_bearer_token(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", TOKEN)]).await;
    for token in [None, Some("wrong"), Some("admin-token-012345678")] {
        let response = app
            .client
            .get(format!("{}/admin/deliveries", app.address))
            .header(
                "authorization",
                token.map_or(String::new(), |t| format!("Bearer {t}")),
            )
            .send()
            .await
            .expect("answer");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        assert_eq!(
            answer(response).await,
            (401, json!({"error": "unauthorized"})),
            "{token:?}"
        );
    }
    // Not a bearer scheme: refused too.
    let response = app
        .client
        .get(format!("{}/admin/deliveries", app.address))
        .header("authorization", TOKEN)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 401);
    let (status, body) = admin(&app, "GET", "/admin/deliveries", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"deliveries": [], "next": null}));
    app.stop().await;
}

/// With RELAY_ADMIN_LISTEN the admin API and /metrics are only there; the
/// probes only on the webhook port.
async fn admin_listener_is_separate_from_the_webhook_port(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("RELAY_ADMIN_TOKEN", TOKEN),
            ("RELAY_ADMIN_LISTEN", "127.0.0.1:0"),
        ],
    )
    .await;
    let admin_base = app.admin_address.clone().expect("an admin listener");
    for path in ["/metrics", "/admin/deliveries"] {
        assert_eq!(get_status(&app, &app.address, path).await, 404, "{path}");
    }
    assert_eq!(get_status(&app, &admin_base, "/metrics").await, 200);
    assert_eq!(
        admin(&app, "GET", "/admin/deliveries", Some(TOKEN)).await.0,
        200
    );
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get_status(&app, &app.address, path).await, 200, "{path}");
        assert_eq!(get_status(&app, &admin_base, path).await, 404, "{path}");
    }
    app.stop().await;
}

async fn listing_filters_and_pages_newest_first_without_secrets(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", TOKEN)]).await;
    for i in 0..5 {
        app.send("sandbox", approved_event(&format!("evt_list{i}")))
            .await;
    }
    let (_, production) = app
        .send_json("production", fixture("payment_approved_production.json"))
        .await;
    assert_eq!(production["status"], "accepted");
    assert!(app.reaches_status("evt_list4", "delivered", WAIT).await);

    // Newest first, three per page, a cursor to the next.
    let (status, page) = admin(
        &app,
        "GET",
        "/admin/deliveries?environment=sandbox&limit=3",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["deliveries"]
        .as_array()
        .expect("list")
        .iter()
        .map(|d| d["event_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["evt_list4", "evt_list3", "evt_list2"]);
    let cursor = page["next"].as_str().expect("a next cursor").to_owned();
    let (_, page) = admin(
        &app,
        "GET",
        &format!("/admin/deliveries?environment=sandbox&limit=3&cursor={cursor}"),
        Some(TOKEN),
    )
    .await;
    let ids: Vec<&str> = page["deliveries"]
        .as_array()
        .expect("list")
        .iter()
        .map(|d| d["event_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["evt_list1", "evt_list0"]);
    assert_eq!(page["next"], Value::Null);

    // By the full AccelerateToken (shown redacted), by event id, by status, by time.
    let (_, found) = admin(
        &app,
        "GET",
        "/admin/deliveries?accelerate_token=tok_acc_evt_list2_0123456789",
        Some(TOKEN),
    )
    .await;
    assert_eq!(found["deliveries"].as_array().expect("list").len(), 1);
    assert_eq!(found["deliveries"][0]["event_id"], "evt_list2");
    let (_, found) = admin(
        &app,
        "GET",
        "/admin/deliveries?event_id=evt_list3&status=delivered",
        Some(TOKEN),
    )
    .await;
    assert_eq!(found["deliveries"].as_array().expect("list").len(), 1);
    let (_, none) = admin(&app, "GET", "/admin/deliveries?status=dead", Some(TOKEN)).await;
    assert_eq!(none["deliveries"], json!([]));
    let (_, later) = admin(
        &app,
        "GET",
        "/admin/deliveries?received_after=2999-01-01T00:00:00Z",
        Some(TOKEN),
    )
    .await;
    assert_eq!(later["deliveries"], json!([]));
    let (_, earlier) = admin(
        &app,
        "GET",
        "/admin/deliveries?received_before=2999-01-01T00:00:00Z",
        Some(TOKEN),
    )
    .await;
    assert_eq!(earlier["deliveries"].as_array().expect("list").len(), 6);
    let (_, prod) = admin(
        &app,
        "GET",
        "/admin/deliveries?environment=production",
        Some(TOKEN),
    )
    .await;
    assert_eq!(prod["deliveries"].as_array().expect("list").len(), 1);

    // Bad filters are a clear 400.
    for query in [
        "status=gone",
        "limit=501",
        "limit=0",
        "received_after=yesterday",
        "colour=red",
        "cursor=x",
    ] {
        let (status, body) = admin(
            &app,
            "GET",
            &format!("/admin/deliveries?{query}"),
            Some(TOKEN),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{query}: {body}"
        );
    }

    // Never a body, a forwarded header, a key or a full token.
    let text = earlier.to_string();
    for secret in [
        SANDBOX_AUTH,
        PRODUCTION_AUTH,
        "tok_acc_evt_list2_0123456789",
        "\"amount\"",
        "cko-signature",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    app.stop().await;
}

/// A time as the views spell it: RFC 3339 in UTC, to the millisecond.
fn is_utc_millis(value: &Value) -> bool {
    value.as_str().is_some_and(|t| {
        t.len() == "2026-12-07T23:30:00.000Z".len()
            && t.ends_with('Z')
            && humantime::parse_rfc3339(t).is_ok()
    })
}

async fn a_delivery_shows_its_attempt_history_and_can_be_retried(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("RELAY_ADMIN_TOKEN", TOKEN),
            ("RELAY_RETRY_SCHEDULE", "50ms"),
        ],
    )
    .await;
    app.sandbox.set_default(Reply::Status(503));
    let (_, accepted) = app.send_json("sandbox", approved_event("evt_hist")).await;
    let id = accepted["delivery_id"]
        .as_str()
        .expect("delivery id")
        .to_owned();
    assert!(app.reaches_status("evt_hist", "dead", WAIT).await);

    let (status, shown) = admin(&app, "GET", &format!("/admin/deliveries/{id}"), Some(TOKEN)).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["status"], "dead");
    assert_eq!(
        (shown["id"].as_str(), shown["environment"].as_str()),
        (Some(id.as_str()), Some("sandbox"))
    );
    assert!(
        shown["next_attempt_at"].is_null() && shown["delivered_at"].is_null(),
        "{shown}"
    );
    assert!(is_utc_millis(&shown["received_at"]), "{shown}");
    let history = shown["attempt_history"].as_array().expect("history");
    assert_eq!(history.len(), 2, "{shown}");
    for (i, attempt) in history.iter().enumerate() {
        assert_eq!(attempt["attempt"], i + 1);
        assert_eq!(attempt["http_status"], 503);
        assert_eq!(attempt["outcome"], "http_5xx");
        assert!(attempt["duration_ms"].is_u64() && is_utc_millis(&attempt["started_at"]));
        assert!(attempt["message"]
            .as_str()
            .is_some_and(|m| m.contains("503")));
    }

    // Retry: 202 with the delivery, then delivered; the history grows.
    app.sandbox.set_default(Reply::Status(200));
    let (status, retried) = admin(
        &app,
        "POST",
        &format!("/admin/deliveries/{id}/retry"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 202, "{retried}");
    assert_eq!(retried["id"], id.as_str());
    assert!(app.reaches_status("evt_hist", "delivered", WAIT).await);
    let (_, shown) = admin(&app, "GET", &format!("/admin/deliveries/{id}"), Some(TOKEN)).await;
    let history = shown["attempt_history"].as_array().expect("history");
    assert_eq!(history.len(), 3);
    assert_eq!(history[2]["outcome"], "delivered");
    assert_eq!(history[2]["http_status"], 200);
    assert!(is_utc_millis(&shown["delivered_at"]), "{shown}");

    for (method, path) in [
        ("GET", "/admin/deliveries/dlv_999999"),
        ("POST", "/admin/deliveries/dlv_999999/retry"),
    ] {
        let (status, body) = admin(&app, method, path, Some(TOKEN)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
    app.stop().await;
}

async fn retry_dead_retries_the_dead_of_one_environment_or_all(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("RELAY_ADMIN_TOKEN", TOKEN),
            ("RELAY_RETRY_SCHEDULE", "50ms"),
        ],
    )
    .await;
    app.sandbox.set_default(Reply::Status(500));
    app.production.set_default(Reply::Status(500));
    app.send("sandbox", approved_event("evt_rd1")).await;
    app.send("sandbox", approved_event("evt_rd2")).await;
    let (_, prod) = app
        .send_json("production", fixture("payment_approved_production.json"))
        .await;
    let prod_event = prod["event_id"].as_str().expect("id").to_owned();
    for id in ["evt_rd1", "evt_rd2", prod_event.as_str()] {
        assert!(app.reaches_status(id, "dead", WAIT).await, "{id}");
    }
    app.sandbox.set_default(Reply::Status(200));
    // A typo or a repeat never widens the action: 400, nothing retried.
    for (query, names) in [
        (
            "enviroment=production",
            "unknown parameter `enviroment`; this endpoint takes environment",
        ),
        (
            "environment=production&environment=sandbox",
            "environment: given more than once; give it once",
        ),
    ] {
        let path = format!("/admin/deliveries/retry-dead?{query}");
        let (status, body) = admin(&app, "POST", &path, Some(TOKEN)).await;
        assert_eq!(
            (status, body),
            (400, json!({"error": "bad_request", "message": names})),
            "{query}"
        );
    }
    for id in ["evt_rd1", "evt_rd2", prod_event.as_str()] {
        assert_eq!(
            app.status_on_disk(id).await.as_deref(),
            Some("dead"),
            "{id}"
        );
    }
    let (status, body) = admin(
        &app,
        "POST",
        "/admin/deliveries/retry-dead?environment=sandbox",
        Some(TOKEN),
    )
    .await;
    assert_eq!((status, body), (200, json!({"retried": 2})));
    assert!(app.reaches_status("evt_rd2", "delivered", WAIT).await);
    assert_eq!(
        app.status_on_disk(&prod_event).await.as_deref(),
        Some("dead")
    );
    app.production.set_default(Reply::Status(200));
    let (_, body) = admin(&app, "POST", "/admin/deliveries/retry-dead", Some(TOKEN)).await;
    assert_eq!(body, json!({"retried": 1}));
    assert!(app.reaches_status(&prod_event, "delivered", WAIT).await);
    app.stop().await;
}

/// The value of one sample line of the Prometheus text, 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

async fn metrics_count_every_answer_and_attempt(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_RETRY_SCHEDULE", "50ms")]).await;
    app.sandbox.script([Reply::Status(503)]);
    app.send("sandbox", approved_event("evt_m1")).await;
    app.send("sandbox", approved_event("evt_m1")).await;
    app.send("sandbox", fixture("payment_captured.json")).await;
    app.post(
        "/webhooks/checkoutdotcom/sandbox",
        b"{}".to_vec(),
        Some("wrong"),
        None,
    )
    .await;
    app.post(
        "/webhooks/checkoutdotcom/nowhere",
        b"{}".to_vec(),
        None,
        None,
    )
    .await;
    assert!(app.reaches_status("evt_m1", "delivered", WAIT).await);

    let text = app.metrics_text().await;
    let webhooks = |env: &str, result: &str| {
        sample(
            &text,
            &format!(
                "accelerate_relay_webhooks_total{{environment=\"{env}\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(webhooks("sandbox", "accepted"), 1.0, "{text}");
    assert_eq!(webhooks("sandbox", "duplicate"), 1.0);
    assert_eq!(webhooks("sandbox", "ignored_event_type"), 1.0);
    assert_eq!(webhooks("sandbox", "unauthorized"), 1.0);
    assert_eq!(webhooks("none", "unknown_environment"), 1.0);
    // Every result the contract lists is a series from the start, and no other.
    let mut results: Vec<&str> = text
        .lines()
        .filter_map(|line| {
            line.strip_prefix("accelerate_relay_webhooks_total{environment=\"none\",result=\"")
        })
        .filter_map(|rest| rest.split('"').next())
        .collect();
    results.sort_unstable();
    let mut contract = vec![
        "accepted",
        "duplicate",
        "ignored_event_type",
        "ignored_no_accelerate_token",
        "unauthorized",
        "invalid_signature",
        "malformed_event",
        "payload_too_large",
        "unknown_environment",
        "forbidden_source",
        "store_unavailable",
        "request_timeout",
        "request_header_fields_too_large",
        "uri_too_long",
        "not_implemented",
        "bad_request",
        "method_not_allowed",
        "not_found",
    ];
    contract.sort_unstable();
    assert_eq!(results, contract, "{text}");
    assert_eq!(
        sample(&text, "accelerate_relay_webhook_duration_seconds_count"),
        5.0
    );
    let attempts = |outcome: &str| {
        sample(&text, &format!("accelerate_relay_delivery_attempts_total{{environment=\"sandbox\",outcome=\"{outcome}\"}}"))
    };
    assert_eq!(attempts("http_5xx"), 1.0);
    assert_eq!(attempts("delivered"), 1.0);
    assert_eq!(
        sample(
            &text,
            "accelerate_relay_delivery_lag_seconds_count{environment=\"sandbox\"}"
        ),
        1.0
    );
    assert_eq!(sample(&text, "accelerate_relay_store_up"), 1.0);
    assert_eq!(
        sample(
            &text,
            "accelerate_relay_deliveries{environment=\"sandbox\",status=\"pending\"}"
        ),
        0.0
    );
    assert!(text.contains(&format!(
        "accelerate_relay_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(text.contains("# HELP accelerate_relay_webhooks_total"));

    // The store's gauges are read at scrape time.
    app.sandbox.set_default(Reply::Status(500));
    app.send("sandbox", approved_event("evt_m2")).await;
    assert!(app.reaches_status("evt_m2", "dead", WAIT).await);
    let text = app.metrics_text().await;
    assert_eq!(
        sample(
            &text,
            "accelerate_relay_deliveries{environment=\"sandbox\",status=\"dead\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "accelerate_relay_deliveries_dead_total{environment=\"sandbox\"}"
        ),
        1.0
    );

    // promtool (Debian's prometheus, which .ci/run installs) finds nothing to report.
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
            let out = child.wait_with_output().expect("promtool");
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
        }
        Err(_) => println!("!!! promtool is not installed: `promtool check metrics` not run here (.ci/run installs it) !!!"),
    }
    app.stop().await;
}

/// Every metric the alert rules and the dashboard use exists on a real
/// relay's /metrics after real traffic, so they cannot drift apart. The
/// relay serves HTTPS, so the certificate's metric is there too.
#[tokio::test]
async fn alert_rules_and_dashboard_use_only_metrics_that_exist() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = common::tls::TestCa::new("relay CA");
    let (cert, key) = ca.write_pair(dir.path(), "relay", &["localhost"], (2031, 6, 1));
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("RELAY_TLS_CERT", cert.to_str().expect("path")),
            ("RELAY_TLS_KEY", key.to_str().expect("path")),
        ],
    )
    .await;
    let base = app.address.replace("http://127.0.0.1", "https://localhost");
    let client = ca.client();
    let sent = post_signed(&client, &base, "sandbox", approved_event("evt_names")).await;
    assert_eq!(sent.expect("https answer").status(), 200);
    assert!(app.reaches_status("evt_names", "delivered", WAIT).await);
    let text = get_text(&client, &format!("{base}/metrics")).await;
    let exposed: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().expect("a name"))
        .collect();
    let dir = format!("{}/deploy/monitoring", env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for file in ["alerts.yaml", "dashboard.json"] {
        let content = std::fs::read_to_string(format!("{dir}/{file}")).expect("monitoring file");
        let mut rest = content.as_str();
        while let Some(at) = rest.find("accelerate_relay_") {
            rest = &rest[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            assert!(
                exposed.contains(name),
                "{file} uses {name}, which /metrics does not expose"
            );
            checked += 1;
            rest = &rest[end..];
        }
    }
    assert!(
        checked > 10,
        "the rules and dashboard use the relay's metrics"
    );
    app.stop().await;
}

/// Ids and parameters are read one way only: a delivery id is `dlv_` and a
/// canonical number; a repeated filter or a parameter an endpoint does not
/// take is 400 naming it.
async fn ids_and_parameters_are_parsed_strictly(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", TOKEN)]).await;
    let (_, accepted) = app.send_json("sandbox", approved_event("evt_strict")).await;
    let id = accepted["delivery_id"].as_str().expect("id").to_owned();
    assert_eq!(id, "dlv_1");
    assert_eq!(
        admin(&app, "GET", "/admin/deliveries/dlv_1", Some(TOKEN))
            .await
            .0,
        200
    );
    for other in ["dlv_01", "dlv_+1", "1", "dlv_", "dlv_-1", "dlv_0"] {
        let (status, body) = admin(
            &app,
            "GET",
            &format!("/admin/deliveries/{other}"),
            Some(TOKEN),
        )
        .await;
        assert_eq!(status, 400, "{other}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("dlv_42")),
            "{body}"
        );
    }
    let (status, body) = admin(
        &app,
        "GET",
        "/admin/deliveries/dlv_1?verbose=1",
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (
            400,
            Some("unknown parameter `verbose`; this endpoint takes none")
        )
    );
    let (status, _) = admin(
        &app,
        "POST",
        "/admin/deliveries/dlv_1/retry?force=1",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = admin(
        &app,
        "GET",
        "/admin/deliveries?status=dead&status=delivered",
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (400, Some("status: given more than once; give it once"))
    );
    app.stop().await;
}

/// A retry while an attempt is being sent is refused (409, saying so), never
/// a second send beside it: ten retries at once during a slow first attempt
/// leave exactly one request at Accelerate and that attempt in the history.
async fn a_retry_never_sends_beside_an_attempt_in_flight(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", TOKEN)]).await;
    app.sandbox
        .set_default(Reply::Slow(Duration::from_millis(1500), 200));
    let (_, accepted) = app
        .send_json("sandbox", approved_event("evt_inflight"))
        .await;
    let id = accepted["delivery_id"].as_str().expect("id").to_owned();
    app.sandbox.wait_for(1, WAIT).await;
    let path = format!("/admin/deliveries/{id}/retry");
    let retries = (0..10).map(|_| admin(&app, "POST", &path, Some(TOKEN)));
    for (status, body) in futures_util::future::join_all(retries).await {
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"], "attempt_in_flight");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("an attempt is being sent to Accelerate now")),
            "{body}"
        );
    }
    assert!(app.reaches_status("evt_inflight", "delivered", WAIT).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.sandbox.received().len(), 1, "one send");
    let (_, shown) = admin(&app, "GET", &format!("/admin/deliveries/{id}"), Some(TOKEN)).await;
    assert_eq!(shown["attempts"], 1, "{shown}");
    // Once it is recorded, a retry sends it again, as asked.
    app.sandbox.set_default(Reply::Status(200));
    assert_eq!(admin(&app, "POST", &path, Some(TOKEN)).await.0, 202);
    app.sandbox.wait_for(2, WAIT).await;
    app.stop().await;
}

/// A delivered event retried keeps its first delivery in the history (the
/// next one does not overwrite it), and one that then dies is dead with no
/// delivery time left over.
async fn a_retried_delivery_keeps_every_attempt(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("RELAY_ADMIN_TOKEN", TOKEN),
            ("RELAY_RETRY_SCHEDULE", "50ms"),
        ],
    )
    .await;
    let (_, accepted) = app.send_json("sandbox", approved_event("evt_twice")).await;
    let id = accepted["delivery_id"].as_str().expect("id").to_owned();
    assert!(app.reaches_status("evt_twice", "delivered", WAIT).await);
    let path = format!("/admin/deliveries/{id}");
    let retry = format!("{path}/retry");
    assert_eq!(admin(&app, "POST", &retry, Some(TOKEN)).await.0, 202);
    app.sandbox.wait_for(2, WAIT).await;
    let history = |shown: &Value| -> Vec<(u64, String)> {
        shown["attempt_history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|a| {
                (
                    a["attempt"].as_u64().expect("n"),
                    a["outcome"].as_str().expect("o").to_owned(),
                )
            })
            .collect()
    };
    let delivered_twice = eventually(WAIT, || async {
        let (_, shown) = admin(&app, "GET", &path, Some(TOKEN)).await;
        history(&shown).len() == 2
    })
    .await;
    let (_, shown) = admin(&app, "GET", &path, Some(TOKEN)).await;
    assert!(delivered_twice, "{shown}");
    assert_eq!(
        history(&shown),
        [(1, "delivered".to_owned()), (2, "delivered".to_owned())]
    );

    app.sandbox.set_default(Reply::Status(503));
    assert_eq!(admin(&app, "POST", &retry, Some(TOKEN)).await.0, 202);
    assert!(app.reaches_status("evt_twice", "dead", WAIT).await);
    let (_, shown) = admin(&app, "GET", &path, Some(TOKEN)).await;
    assert_eq!(shown["delivered_at"], Value::Null, "{shown}");
    let outcomes: Vec<String> = history(&shown).into_iter().map(|(_, o)| o).collect();
    assert_eq!(
        outcomes,
        ["delivered", "delivered", "http_5xx", "http_5xx"],
        "{shown}"
    );
    app.stop().await;
}

on_both_stores!(
    a_retried_delivery_keeps_every_attempt,
    a_retry_never_sends_beside_an_attempt_in_flight,
    ids_and_parameters_are_parsed_strictly,
    admin_api_is_off_without_a_token,
    admin_api_needs_the_bearer_token,
    admin_listener_is_separate_from_the_webhook_port,
    listing_filters_and_pages_newest_first_without_secrets,
    a_delivery_shows_its_attempt_history_and_can_be_retried,
    retry_dead_retries_the_dead_of_one_environment_or_all,
    metrics_count_every_answer_and_attempt,
);

/// The binary's audit lines are JSON with one key per name (the logger's own
/// `target` is not overwritten by what was acted on), and the client's
/// address is an address.
#[tokio::test]
async fn audit_lines_are_well_formed_json() {
    let dir = tempfile::tempdir().expect("dir");
    let mock = MockAccelerate::start().await;
    let relay =
        process::RelayProcess::start(dir.path(), &mock.url(), &[("RELAY_ADMIN_TOKEN", TOKEN)])
            .await;
    let client = reqwest::Client::new();
    let sent = post_signed(
        &client,
        &relay.address,
        "sandbox",
        approved_event("evt_audit"),
    )
    .await;
    assert_eq!(sent.expect("answer").status(), 200);
    // Retried once its first attempt has finished (a retry during it is 409).
    mock.wait_for(1, Duration::from_secs(10)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let retried = loop {
        let answer = client
            .post(format!("{}/admin/deliveries/dlv_1/retry", relay.address))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("retry");
        if answer.status() != 409 || std::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(retried.status(), 202);
    // The console's lines name the session that acted.
    let session = operator::sign_in(&relay.address, TOKEN)
        .await
        .expect("signed in");
    let csrf = session.csrf(&relay.address).await;
    let (status, _) = session
        .post(&relay.address, "/console/sign-out", &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 303);
    let log = std::fs::read_to_string(dir.path().join("relay.log")).expect("log");
    for action in ["console-sign-in", "console-sign-out"] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("\"action\":\"{action}\"")))
            .unwrap_or_else(|| panic!("{action} in {log}"));
        let parsed: serde_json::Value = serde_json::from_str(line).expect("JSON");
        assert_eq!(parsed["actor"], session.id().as_str(), "{line}");
        assert_eq!(parsed["subject"], session.id().as_str(), "{line}");
    }
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"audit\":true") && l.contains("\"action\":\"retry\""))
        .collect();
    // The 409s are audited too; the last line is the retry that was made.
    assert!(!audit.is_empty(), "{log}");
    let line = audit[audit.len() - 1];
    let parsed: serde_json::Value = serde_json::from_str(line).expect("JSON");
    for key in ["target", "actor", "action", "subject", "result", "peer"] {
        assert_eq!(
            line.matches(&format!("\"{key}\":")).count(),
            1,
            "{key} in {line}"
        );
    }
    assert_eq!(parsed["target"], "accelerate_relay::operations", "{line}");
    assert_eq!(parsed["action"], "retry");
    assert_eq!(parsed["actor"], "api");
    assert_eq!(parsed["result"], "pending, due now");
    assert_eq!(parsed["subject"], "dlv_1");
    assert_eq!(parsed["peer"], "127.0.0.1", "{line}");
}
