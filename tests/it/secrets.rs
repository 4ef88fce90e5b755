//! Recognisable secrets, tokens and card holder data go through every kind of
//! traffic; no log line, answer body or CLI output may show them.

use crate::common;

use std::time::Duration;

use common::process::{RelayProcess, BINARY};
use common::*;

const AUTH: &str = "AUTHSECRET-sbx-7d1f0c";
const SIG: &str = "SIGSECRET-sbx-93ab1e";
const PRD_AUTH: &str = "AUTHSECRET-prd-51c2aa";
const PRD_SIG: &str = "SIGSECRET-prd-0e77d4";
const ADMIN: &str = "ADMINSECRET-4f4f4f-0123456789abcdef0123";
const DB_PASSWORD: &str = "DBSECRET-pw-8181";
const TOKEN: &str = "tok_acc_TOKENSECRET_abcdef123456";

/// What must never appear: the secrets, full tokens (and their middles), card holder data.
const FORBIDDEN: &[&str] = &[
    AUTH,
    SIG,
    PRD_AUTH,
    PRD_SIG,
    ADMIN,
    DB_PASSWORD,
    "SECRET",
    TOKEN,
    "tok_acc_7f3c2b1a9e8d4c6b5a4f3e2d1c0b9f3e",
    "7f3c2b1a9e8d",
    "tok_acc_prod_000111222333444555666777",
    "Bruce Wayne",
    "brucewayne@example.com",
    "Zoë Ångström",
    "F31828E2BDABAE63",
];

fn event_with_secret_token(id: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","type":"payment_approved","data":{{"id":"pay_{id}","source":{{"name":"Bruce Wayne","last4":"4242"}},"customer":{{"email":"brucewayne@example.com"}},"metadata":{{"AccelerateToken":"{TOKEN}"}}}}}}"#
    )
    .into_bytes()
}

struct Traffic {
    client: reqwest::Client,
    address: String,
    answers: Vec<String>,
}

impl Traffic {
    async fn post(&mut self, env: &str, body: Vec<u8>, auth: &str, key: &str) {
        let response = post_signed_with(&self.client, &self.address, env, body, auth, key)
            .await
            .expect("answer");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        self.answers.push(format!("{status} {text}"));
    }
}

fn scan(what: &str, text: &str) {
    for needle in FORBIDDEN {
        assert!(
            !text.contains(needle),
            "{what} shows `{needle}`:\n{}",
            text.lines()
                .filter(|l| l.contains(needle))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_answer_or_output_shows_a_secret_token_or_card_holder_data() {
    let dir = tempfile::tempdir().expect("dir");
    let accelerate = MockAccelerate::start().await;
    let production = MockAccelerate::start().await;
    // Accelerate fails in every way before it accepts, so every log path runs.
    accelerate.script([
        Reply::Status(500),
        Reply::RetryAfter(429, "0".into()),
        Reply::Slow(Duration::from_secs(2), 200),
        Reply::Status(401),
    ]);
    let production_url = production.url();
    let relay = RelayProcess::start(
        dir.path(),
        &accelerate.url(),
        &[
            ("RUST_LOG", "trace"),
            (
                "CKO_SANDBOX_AUTHORIZATION_KEY",
                &format!("{AUTH},old-{AUTH}"),
            ),
            ("CKO_SANDBOX_SIGNATURE_KEY", SIG),
            ("CKO_PRODUCTION_AUTHORIZATION_KEY", PRD_AUTH),
            ("CKO_PRODUCTION_SIGNATURE_KEY", PRD_SIG),
            ("ACCELERATE_PRODUCTION_URL", &production_url),
            ("RELAY_ADMIN_TOKEN", ADMIN),
            ("RELAY_DELIVERY_TIMEOUT_MS", "500"),
            ("RELAY_LEASE_MS", "2000"),
            ("RELAY_RETRY_SCHEDULE", "50ms,50ms,50ms,50ms,50ms"),
            ("RELAY_MAX_BODY_BYTES", "4096"),
        ],
    )
    .await;
    let mut traffic = Traffic {
        client: reqwest::Client::new(),
        address: relay.address.clone(),
        answers: Vec::new(),
    };

    for (name, env) in RELAYED {
        let (auth, key) = if *env == "sandbox" {
            (AUTH, SIG)
        } else {
            (PRD_AUTH, PRD_SIG)
        };
        traffic.post(env, fixture(name), auth, key).await;
        traffic.post(env, fixture(name), auth, key).await; // duplicate
    }
    traffic
        .post("sandbox", event_with_secret_token("evt_s1"), AUTH, SIG)
        .await;
    traffic
        .post("sandbox", fixture("payment_captured.json"), AUTH, SIG)
        .await;
    traffic
        .post(
            "sandbox",
            fixture("payment_approved_no_token.json"),
            AUTH,
            SIG,
        )
        .await;
    traffic
        .post("sandbox", event_with_secret_token("evt_s2"), "wrong", SIG)
        .await;
    traffic
        .post("sandbox", event_with_secret_token("evt_s3"), PRD_AUTH, SIG)
        .await;
    traffic
        .post("sandbox", event_with_secret_token("evt_s4"), AUTH, PRD_SIG)
        .await;
    traffic
        .post("production", event_with_secret_token("evt_s5"), AUTH, SIG)
        .await;
    traffic
        .post("staging", event_with_secret_token("evt_s6"), AUTH, SIG)
        .await;
    let mut broken = event_with_secret_token("evt_s7");
    broken.truncate(broken.len() - 3);
    traffic.post("sandbox", broken, AUTH, SIG).await;
    let mut big = event_with_secret_token("evt_s8");
    big.extend(std::iter::repeat_n(b' ', 8000));
    traffic.post("sandbox", big, AUTH, SIG).await;

    // Four sandbox events, and four more attempts for the scripted failures.
    accelerate.wait_for(8, Duration::from_secs(20)).await;
    production.wait_for(2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The admin API and /metrics, with a wrong and with the right token.
    for (path, token, post) in [
        ("/admin/deliveries", "wrong-token", false),
        ("/admin/deliveries", ADMIN, false),
        (
            "/admin/deliveries?accelerate_token=tok_acc_TOKENSECRET_abcdef123456",
            ADMIN,
            false,
        ),
        ("/admin/deliveries/dlv_1", ADMIN, false),
        ("/admin/deliveries/dlv_1/retry", ADMIN, true),
        ("/admin/deliveries/retry-dead", ADMIN, true),
        ("/metrics", ADMIN, false),
    ] {
        let url = format!("{}{path}", relay.address);
        let request = if post {
            traffic.client.post(url)
        } else {
            traffic.client.get(url)
        };
        let response = request
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .expect("answer");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.as_u16() < 500, "{path}: {status}");
        traffic.answers.push(format!("{status} {text}"));
    }

    let db = format!(
        "sqlite://{}",
        common::process::db_path(dir.path()).display()
    );
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BINARY)
            .args(args)
            .env("RELAY_DATABASE_URL", &db)
            .env("CKO_SANDBOX_AUTHORIZATION_KEY", AUTH)
            .env("CKO_SANDBOX_SIGNATURE_KEY", SIG)
            .env("RELAY_ADMIN_TOKEN", ADMIN)
            .output()
            .expect("run");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let mut outputs = vec![
        cli(&["check-config"]),
        cli(&["deliveries", "list"]),
        cli(&["deliveries", "show", "dlv_1"]),
        cli(&["deliveries", "show", "dlv_1", "--json"]),
        cli(&["deliveries", "list", "--accelerate-token", TOKEN]),
        cli(&["deliveries", "list", "--json"]),
    ];
    // A configuration error that involves a secret-bearing variable.
    let out = std::process::Command::new(BINARY)
        .arg("check-config")
        .env_clear()
        .env("CKO_SANDBOX_AUTHORIZATION_KEY", AUTH)
        .env(
            "RELAY_DATABASE_URL",
            format!("mysql://u:{DB_PASSWORD}@h/db"),
        )
        .output()
        .expect("run");
    outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    relay.sigterm();
    let mut relay = relay;
    let exited = relay.exit_status(Duration::from_secs(15)).await;
    assert!(
        exited.is_some_and(|s| s.success()),
        "the relay stops cleanly on SIGTERM"
    );

    let log = std::fs::read_to_string(dir.path().join("relay.log")).expect("log");
    let lines = log.lines().count();
    assert!(
        lines > 100,
        "the trace log is suspiciously short ({lines} lines)"
    );
    assert!(log.contains("tok_acc…3456"), "tokens are logged, redacted");
    scan("the relay's log (RUST_LOG=trace)", &log);
    for answer in &traffic.answers {
        scan("an answer to Checkout.com", answer);
    }
    for output in &outputs {
        scan("CLI output", output);
    }
    println!(
        "secrets scan: {lines} log lines, {} answers, {} CLI outputs; none shows a secret, full token or card holder data",
        traffic.answers.len(),
        outputs.len()
    );
}
