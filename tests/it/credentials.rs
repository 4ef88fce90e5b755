//! Admin credentials over the real server: console sessions that sign-out
//! and revocation end (in the store, so for every replica), admin token
//! rules, throttled guessing per client address, and the HTTP manners of
//! the operator's paths (Bearer in any case, HEAD, 405 with Allow, the
//! console's own page for 413/415).

use crate::common;

use std::time::Duration;

use common::operator::{self, no_redirects};
use common::*;

const TOKEN: &str = "credentials-admin-token-0123456789abcdef";
const NEXT_TOKEN: &str = "credentials-admin-token-rotated-9876543210";
const WAIT: Duration = Duration::from_secs(10);

async fn app_with_token(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", TOKEN)]).await
}

async fn signing_out_ends_the_session_and_its_forms(backend: Backend) {
    let app = app_with_token(backend).await;
    let base = app.address.as_str();
    let session = operator::sign_in(base, TOKEN).await.expect("signed in");
    assert!(session.opens(base).await);
    let csrf = session.csrf(base).await;

    // A delivery to retry later with the signed-out cookie.
    let (status, accepted) = app.send_json("sandbox", approved_event("evt_cred_1")).await;
    assert_eq!(status, 200);
    assert!(app.reaches_status("evt_cred_1", "delivered", WAIT).await);
    let id = accepted["delivery_id"].as_str().expect("id").to_owned();

    let (status, location) = session
        .post(base, "/console/sign-out", &[("csrf", &csrf)])
        .await;
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/console/sign-in"))
    );

    // The same cookie, sent again as a stolen or cached one would be.
    assert!(!session.opens(base).await, "signed out");
    let (status, location) = session
        .post(
            base,
            &format!("/console/deliveries/{id}/retry"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/console/sign-in"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.sandbox.received().len(),
        1,
        "the old form retried nothing"
    );
    app.stop().await;
}

async fn sessions_are_listed_and_revoked_through_the_api(backend: Backend) {
    let app = app_with_token(backend).await;
    let base = app.address.as_str();
    let first = operator::sign_in(base, TOKEN).await.expect("signed in");
    let second = operator::sign_in(base, TOKEN).await.expect("signed in");
    let client = reqwest::Client::new();

    let listed = client
        .get(format!("{base}/admin/sessions"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer");
    let (status, body) = answer(listed).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["sessions"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 2, "{body}");
    assert!(ids.contains(&first.id().as_str()) && ids.contains(&second.id().as_str()));
    let secret = first.cookie.rsplit('.').next().expect("secret");
    assert!(
        !body.to_string().contains(secret),
        "no secret listed: {body}"
    );

    let revoke = |id: String| {
        let client = client.clone();
        async move {
            let answer = client
                .post(format!("{base}/admin/sessions/{id}/revoke"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("answer");
            answer.status().as_u16()
        }
    };
    assert_eq!(revoke(first.id()).await, 200);
    assert!(!first.opens(base).await, "revoked");
    assert!(second.opens(base).await, "the other session goes on");
    assert_eq!(revoke(first.id()).await, 404, "already ended");
    assert_eq!(revoke("ses_0123".to_owned()).await, 400);
    app.stop().await;
}

/// Tokens are trimmed (a Secret made from a file ends in a newline), several
/// are accepted for rotation, and removing one ends its console sessions.
async fn tokens_rotate_and_removing_one_ends_its_sessions(backend: Backend) {
    let both = format!("{TOKEN}\n, {NEXT_TOKEN}\n");
    let app = TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", both.as_str())]).await;
    let base = app.address.clone();
    let client = reqwest::Client::new();
    for token in [TOKEN, NEXT_TOKEN] {
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let status = client
                .get(format!("{base}/admin/deliveries"))
                .header("authorization", format!("{scheme} {token}"))
                .send()
                .await
                .expect("answer")
                .status();
            assert_eq!(status, 200, "{scheme} with token {token}");
        }
    }
    let old = operator::sign_in(&base, TOKEN).await.expect("signed in");
    let new = operator::sign_in(&base, &format!("{NEXT_TOKEN}\n"))
        .await
        .expect("a pasted token with its newline signs in");
    assert!(old.opens(&base).await && new.opens(&base).await);

    let app = app.restart_with(&[("RELAY_ADMIN_TOKEN", NEXT_TOKEN)]).await;
    let base = app.address.clone();
    assert!(!old.opens(&base).await, "its token was removed");
    assert!(new.opens(&base).await, "signed in with the token kept");
    let status = client
        .get(format!("{base}/admin/deliveries"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer")
        .status();
    assert_eq!(status, 401, "the removed token");
    app.stop().await;
}

on_both_stores!(
    signing_out_ends_the_session_and_its_forms,
    sessions_are_listed_and_revoked_through_the_api,
    tokens_rotate_and_removing_one_ends_its_sessions,
    operator_paths_answer_http_methods_properly,
);

#[test]
fn weak_or_unprintable_tokens_stop_start_up() {
    for (token, expected) in [
        (
            "a",
            "the token is 1 characters, shorter than the 32 required",
        ),
        (
            "0123456789abcdef0123456789abcde",
            "is 31 characters, shorter than the 32 required",
        ),
        (
            "0123456789abcdef0123456789abcdef, tiny1",
            "token 2 of 2 is 5 characters",
        ),
        (
            "0123456789abcdef 0123456789abcdef",
            "not printable ASCII (or a space)",
        ),
        (
            "0123456789abcdef0123456789abcdéf",
            "not printable ASCII (or a space)",
        ),
        (" , ", "holds no token"),
    ] {
        let error = config_error(&[("RELAY_ADMIN_TOKEN", token)]);
        assert!(error.starts_with("RELAY_ADMIN_TOKEN: "), "{error}");
        assert!(error.contains(expected), "{token:?}: {error}");
        if expected.contains("shorter") {
            assert!(error.contains("openssl rand -hex 32"), "{error}");
        }
        // Never the token itself in the message.
        for part in token.split(',').map(str::trim).filter(|p| p.len() > 4) {
            assert!(!error.contains(part), "{error}");
        }
    }
}

/// Guessing from one address is throttled there alone: the guesser waits
/// (429 with `Retry-After`), even with the right token, while another
/// address signs in and webhooks are answered; the log has one line per
/// address and window, not one per guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_is_throttled_per_address_and_logged_once() {
    let dir = tempfile::tempdir().expect("dir");
    let mock = MockAccelerate::start().await;
    let relay =
        process::RelayProcess::start(dir.path(), &mock.url(), &[("RELAY_ADMIN_TOKEN", TOKEN)])
            .await;
    let base = relay.address.clone();
    let guesser = reqwest::Client::new();
    let guess = |token: &'static str| {
        let (guesser, base) = (guesser.clone(), base.clone());
        async move {
            guesser
                .get(format!("{base}/admin/deliveries"))
                .bearer_auth(token)
                .send()
                .await
                .expect("answer")
        }
    };
    for _ in 0..5 {
        assert_eq!(guess("not-the-admin-token").await.status(), 401);
    }
    let throttled = guess("not-the-admin-token").await;
    assert_eq!(throttled.status(), 429);
    let wait: u64 = throttled
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    let (_, body) = answer(throttled).await;
    assert_eq!(body["error"], "too_many_attempts");
    // The right token from the same address waits too: a lockout tells
    // nothing about which guess was right.
    assert_eq!(guess(TOKEN).await.status(), 429);

    // A flood of further guesses while webhooks come in: every webhook is
    // answered, and another address is not locked out.
    let flood: Vec<_> = (0..200)
        .map(|_| tokio::spawn(guess("still-wrong")))
        .collect();
    let client = reqwest::Client::new();
    for i in 0..20 {
        let sent = post_signed(
            &client,
            &base,
            "sandbox",
            approved_event(&format!("evt_flood_{i}")),
        )
        .await
        .expect("answer");
        assert_eq!(sent.status(), 200, "webhook {i} during the flood");
    }
    for guess in flood {
        assert_eq!(guess.await.expect("joined").status(), 429);
    }
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client");
    let status = elsewhere
        .get(format!("{base}/admin/deliveries"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer")
        .status();
    assert_eq!(status, 200, "another address with the right token");
    let console = operator::sign_in_from(
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        &base,
        TOKEN,
    )
    .await;
    assert!(console.is_some(), "another address signs in to the console");

    // The console's sign-in counts against the same address, with its own page.
    let page = no_redirects()
        .post(format!("{base}/console/sign-in"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .expect("answer");
    assert_eq!(page.status(), 429);
    assert!(page.headers().contains_key("retry-after"));
    let text = page.text().await.expect("page");
    assert!(
        text.contains("Too many attempts") && text.contains("RELAY_ADMIN_TOKEN"),
        "{text}"
    );

    let metrics = get_text(&client, &format!("{base}/metrics")).await;
    let count = |reason: &str| -> f64 {
        let series = format!("accelerate_relay_admin_auth_refused_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} in {metrics}"))
    };
    assert_eq!(count("wrong_token"), 5.0);
    assert!(count("throttled") >= 203.0, "{}", count("throttled"));

    let log = std::fs::read_to_string(dir.path().join("relay.log")).expect("log");
    let lines = |text: &str| log.lines().filter(|l| l.contains(text)).count();
    assert_eq!(lines("a wrong or missing admin token"), 1, "{log}");
    assert_eq!(lines("wrong admin tokens from this address"), 1, "{log}");
    assert!(!log.contains("not-the-admin-token") && !log.contains(TOKEN));
}

/// HEAD is answered where GET is; another method is 405 naming what is;
/// the console answers a form it cannot take with its own page.
async fn operator_paths_answer_http_methods_properly(backend: Backend) {
    let app = app_with_token(backend).await;
    let base = app.address.as_str();
    let client = no_redirects();
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin/deliveries",
        "/console/sign-in",
    ] {
        let head = client
            .head(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("answer");
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert!(
            head.bytes().await.expect("body").is_empty(),
            "HEAD {path} has no body"
        );
    }
    for (method, path, allow) in [
        ("DELETE", "/admin/deliveries", "GET, HEAD"),
        ("PUT", "/admin/deliveries/dlv_1/retry", "POST"),
        ("GET", "/admin/deliveries/retry-dead", "POST"),
        ("POST", "/metrics", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/console/sign-in", "GET, HEAD, POST"),
        ("GET", "/console/sign-out", "POST"),
    ] {
        let answer = client
            .request(method.parse().expect("method"), format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("answer");
        assert_eq!(answer.status(), 405, "{method} {path}");
        let allowed = answer.headers().get("allow").and_then(|v| v.to_str().ok());
        assert_eq!(allowed, Some(allow), "{method} {path}");
    }

    let oversized = client
        .post(format!("{base}/console/sign-in"))
        .form(&[("token", "x".repeat(10_000))])
        .send()
        .await
        .expect("answer");
    assert_eq!(oversized.status(), 413);
    let page = oversized.text().await.expect("page");
    assert!(
        page.contains("<h1>Payload Too Large</h1>")
            && page.contains("larger than the console takes"),
        "{page}"
    );
    let not_a_form = client
        .post(format!("{base}/console/sign-in"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"token":"{TOKEN}"}}"#))
        .send()
        .await
        .expect("answer");
    assert_eq!(not_a_form.status(), 415);
    let page = not_a_form.text().await.expect("page");
    assert!(page.contains("application/x-www-form-urlencoded"), "{page}");
    assert!(
        page.contains("console.css"),
        "the console's own page: {page}"
    );
    app.stop().await;
}
