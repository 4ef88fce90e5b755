//! Every row of the contract's answer table, in order, over the real server.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;

const APPROVED: &str = "payment_approved.json";

async fn unconfigured_or_unknown_environment_is_404(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("CKO_PRODUCTION_AUTHORIZATION_KEY", ""),
            ("CKO_PRODUCTION_SIGNATURE_KEY", ""),
        ],
    )
    .await;
    for env in ["production", "staging"] {
        let (status, body) = app.send_json(env, fixture(APPROVED)).await;
        assert_eq!(status, 404, "{env}");
        assert_eq!(body, json!({"error": "unknown_environment"}));
    }
    assert!(app
        .status_on_disk("evt_az5sblvku4ge3dwpztvyizgcau")
        .await
        .is_none());
    app.stop().await;
}

async fn bare_url_is_the_only_configured_environment(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("CKO_SANDBOX_AUTHORIZATION_KEY", ""),
            ("CKO_SANDBOX_SIGNATURE_KEY", ""),
        ],
    )
    .await;
    let body = fixture("payment_approved_production.json");
    let sig = sign(PRODUCTION_SIG, &body);
    let (status, answer_body) = answer(
        app.post(
            "/webhooks/checkoutdotcom",
            body,
            Some(PRODUCTION_AUTH),
            Some(&sig),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer_body["status"], "accepted");
    let got = app.production.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(
        got[0].body.as_ref(),
        fixture("payment_approved_production.json")
    );
    app.stop().await;
}

async fn bare_url_is_404_when_both_environments_are_configured(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = fixture(APPROVED);
    let sig = sign(SANDBOX_SIG, &body);
    let (status, body) = answer(
        app.post(
            "/webhooks/checkoutdotcom",
            body,
            Some(SANDBOX_AUTH),
            Some(&sig),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"error": "unknown_environment"}));
    app.stop().await;
}

async fn body_over_the_limit_is_413_before_any_key_is_checked(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_MAX_BODY_BYTES", "1024")]).await;
    let mut big = approved_event("evt_big");
    big.truncate(big.len() - 1);
    big.extend(std::iter::repeat_n(b' ', 2000));
    big.push(b'}');
    // Declared by Content-Length, unsigned and unauthorised: still 413 first.
    let (status, body) = answer(
        app.post("/webhooks/checkoutdotcom/sandbox", big.clone(), None, None)
            .await,
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(body, json!({"error": "payload_too_large"}));

    // Chunked (no Content-Length), correctly signed: refused while it streams in.
    let sig = sign(SANDBOX_SIG, &big);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(256).map(|c| Ok(c.to_vec())).collect();
    let response = app
        .client
        .post(format!("{}/webhooks/checkoutdotcom/sandbox", app.address))
        .header("authorization", SANDBOX_AUTH)
        .header("cko-signature", sig)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 413);

    // Exactly at the limit is fine.
    let mut exact = approved_event("evt_exact");
    exact.truncate(exact.len() - 1);
    exact.extend(std::iter::repeat_n(b' ', 1023 - exact.len()));
    exact.push(b'}');
    assert_eq!(exact.len(), 1024);
    let (status, _) = app.send_json("sandbox", exact).await;
    assert_eq!(status, 200);
    assert!(app.status_on_disk("evt_big").await.is_none());
    app.stop().await;
}

async fn missing_or_wrong_authorization_is_401_unauthorized(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = fixture(APPROVED);
    let sig = sign(SANDBOX_SIG, &body);
    let path = "/webhooks/checkoutdotcom/sandbox";
    for auth in [
        None,
        Some("wrong"),
        Some(PRODUCTION_AUTH),
        Some(""),
        Some("sbx-authorization-key-"),
    ] {
        let (status, answer_body) =
            answer(app.post(path, body.clone(), auth, Some(&sig)).await).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(answer_body, json!({"error": "unauthorized"}));
    }
    // Wrong Authorization wins over a wrong signature (contract order).
    let (_, b) = answer(
        app.post(path, body.clone(), Some("wrong"), Some("zz"))
            .await,
    )
    .await;
    assert_eq!(b, json!({"error": "unauthorized"}));
    assert!(app
        .status_on_disk("evt_az5sblvku4ge3dwpztvyizgcau")
        .await
        .is_none());
    app.stop().await;
}

async fn missing_bad_or_foreign_signature_is_401_invalid_signature(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = fixture(APPROVED);
    let path = "/webhooks/checkoutdotcom/sandbox";
    let mut changed = body.clone();
    changed.push(b' ');
    let cases: Vec<(Vec<u8>, Option<String>)> = vec![
        (body.clone(), None),
        (body.clone(), Some("not-hex!".into())),
        (body.clone(), Some("abcd".into())),
        (body.clone(), Some(sign(PRODUCTION_SIG, &body))),
        (body.clone(), Some(sign(SANDBOX_AUTH, &body))),
        (changed.clone(), Some(sign(SANDBOX_SIG, &body))),
    ];
    for (payload, sig) in cases {
        let (status, b) = answer(
            app.post(path, payload, Some(SANDBOX_AUTH), sig.as_deref())
                .await,
        )
        .await;
        assert_eq!(status, 401, "{sig:?}");
        assert_eq!(b, json!({"error": "invalid_signature"}));
    }
    assert!(app
        .status_on_disk("evt_az5sblvku4ge3dwpztvyizgcau")
        .await
        .is_none());
    assert!(app.sandbox.received().is_empty());
    app.stop().await;
}

async fn body_that_is_not_an_event_is_400_malformed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for body in [
        &b"not json"[..],
        b"",
        b"[]",
        br#"["evt_1","payment_approved"]"#,
        b"\"evt_1\"",
        br#"{"type":"payment_approved"}"#,
        br#"{"id":"evt_1"}"#,
        br#"{"id":42,"type":"payment_approved"}"#,
        br#"{"id":"evt_1","type":null}"#,
        br#"{"id":"evt_1","id":"evt_2","type":"payment_approved"}"#,
        br#"{"id":"evt_1","type":"payment_approved"} trailing"#,
        b"{\"id\":\"evt_\xff\",\"type\":\"payment_approved\"}",
    ] {
        let (status, b) = app.send_json("sandbox", body.to_vec()).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(body));
        assert_eq!(b, json!({"error": "malformed_event"}));
    }
    app.stop().await;
}

/// One rule along the whole path the relay reads: a duplicated key is
/// malformed, whatever a last-value-wins parser downstream would see.
async fn duplicated_keys_on_the_read_path_are_400_malformed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = r#""AccelerateToken":"tok_acc_0123456789abcdef""#;
    for (i, data) in [
        format!(r#"{{"metadata":{{{token}}}}},"data":{{"metadata":{{{token}}}}}"#),
        format!(r#"{{"metadata":{{}},"metadata":{{{token}}}}}"#),
        format!(r#"{{"metadata":{{{token},"AccelerateToken":"tok_other_0123456789"}}}}"#),
        format!(r#"{{"metadata":{{{token},"Accelerate\u0054oken":"tok_other_0123456789"}}}}"#),
    ]
    .iter()
    .enumerate()
    {
        let event = format!(r#"{{"id":"evt_dup{i}","type":"payment_approved","data":{data}}}"#);
        let (status, body) = app.send_json("sandbox", event.into_bytes()).await;
        assert_eq!(
            (status, body),
            (400, json!({"error": "malformed_event"})),
            "{data}"
        );
        assert!(app.status_on_disk(&format!("evt_dup{i}")).await.is_none());
    }
    app.stop().await;
}

/// A NUL (which PostgreSQL cannot store) or other control character in an id
/// or type is malformed; in a token it is no usable token. Neither reaches
/// the store, and unrelated webhooks sent at the same time are all accepted.
async fn control_characters_are_refused_without_harming_other_webhooks(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let nul_id = br#"{"id":"evt_nul\u0000","type":"payment_approved","data":{"metadata":{"AccelerateToken":"tok_acc_0123456789abcdef"}}}"#.to_vec();
    let nul_type = br#"{"id":"evt_bel","type":"payment_approved\u0007","data":{"metadata":{"AccelerateToken":"tok_acc_0123456789abcdef"}}}"#.to_vec();
    let nul_token = br#"{"id":"evt_nultok","type":"payment_approved","data":{"metadata":{"AccelerateToken":"tok_acc_\u0000_0123456789"}}}"#.to_vec();
    let valid = (0..100).map(|i| app.send_json("sandbox", approved_event(&format!("evt_cc{i}"))));
    let (answers, nul_id, nul_type, nul_token) = tokio::join!(
        futures_util::future::join_all(valid),
        app.send_json("sandbox", nul_id),
        app.send_json("sandbox", nul_type),
        app.send_json("sandbox", nul_token),
    );
    assert_eq!(nul_id, (400, json!({"error": "malformed_event"})));
    assert_eq!(nul_type, (400, json!({"error": "malformed_event"})));
    assert_eq!(
        nul_token,
        (
            200,
            json!({"status": "ignored", "reason": "no_accelerate_token"})
        )
    );
    for (status, body) in answers {
        assert_eq!((status, body["status"].as_str()), (200, Some("accepted")));
    }
    assert_eq!(app.db.count().await, 100);
    assert_eq!(readyz(&app.client, &app.address).await, 200);
    app.stop().await;
}

/// A row the database refuses fails alone: the others committed with it in
/// the same group are still accepted, and the store stays ready.
async fn a_row_the_database_refuses_fails_alone_not_its_group(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.db.refuse_event("evt_poison").await;
    for round in 0..3 {
        let valid = (0..100)
            .map(|i| app.send_json("sandbox", approved_event(&format!("evt_r{round}_{i}"))));
        let (answers, poison) = tokio::join!(
            futures_util::future::join_all(valid),
            app.send_json("sandbox", approved_event("evt_poison")),
        );
        for (status, body) in answers {
            assert_eq!((status, body["status"].as_str()), (200, Some("accepted")));
        }
        assert_ne!(poison.0, 200, "{poison:?}");
        if backend == Backend::Postgres {
            // A data exception is about the event: answered as such, not 503.
            assert_eq!(poison, (400, json!({"error": "malformed_event"})));
        }
    }
    assert!(app.status_on_disk("evt_poison").await.is_none());
    assert_eq!(app.db.count().await, 300);
    let ready = eventually(Duration::from_secs(3), || async {
        readyz(&app.client, &app.address).await == 200
    })
    .await;
    assert!(ready, "the store is ready: only one row was refused");
    app.stop().await;
}

async fn other_event_types_are_ignored_and_never_stored(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = app
        .send_json("sandbox", fixture("payment_captured.json"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"status": "ignored", "reason": "event_type"}));
    assert!(app
        .status_on_disk("evt_c7qzn3mxr5hf4exqauzjzhdecw")
        .await
        .is_none());
    app.stop().await;
}

async fn configured_event_types_are_the_ones_relayed(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_EVENT_TYPES", "payment_captured")]).await;
    let (_, body) = app
        .send_json("sandbox", fixture("payment_captured.json"))
        .await;
    assert_eq!(body["status"], "accepted");
    let (_, body) = app.send_json("sandbox", fixture(APPROVED)).await;
    assert_eq!(body, json!({"status": "ignored", "reason": "event_type"}));
    app.stop().await;
}

async fn events_without_a_token_are_ignored_and_never_stored(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = app
        .send_json("sandbox", fixture("payment_approved_no_token.json"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "ignored", "reason": "no_accelerate_token"})
    );
    for (i, data) in [
        r#"{"metadata":{"AccelerateToken":""}}"#,
        r#"{"metadata":{"AccelerateToken":123}}"#,
        r#"null"#,
    ]
    .iter()
    .enumerate()
    {
        let event = format!(r#"{{"id":"evt_nt{i}","type":"payment_declined","data":{data}}}"#);
        let (status, body) = app.send_json("sandbox", event.into_bytes()).await;
        assert_eq!(status, 200);
        assert_eq!(body["reason"], "no_accelerate_token", "{data}");
        assert!(app.status_on_disk(&format!("evt_nt{i}")).await.is_none());
    }
    app.stop().await;
}

async fn accepted_event_is_on_disk_when_answered(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Accelerate fails, so the row stays pending and can be seen as committed.
    app.sandbox.set_default(Reply::Status(500));
    let (status, body) = app.send_json("sandbox", fixture(APPROVED)).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["event_id"], "evt_az5sblvku4ge3dwpztvyizgcau");
    assert!(body["delivery_id"]
        .as_str()
        .is_some_and(|d| d.starts_with("dlv_")));
    let on_disk = app.status_on_disk("evt_az5sblvku4ge3dwpztvyizgcau").await;
    assert!(on_disk.is_some(), "a 200 accepted must mean committed");
    app.stop().await;
}

async fn resent_event_is_duplicate_and_forwarded_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, first) = app.send_json("sandbox", fixture(APPROVED)).await;
    assert_eq!(first["status"], "accepted");
    for _ in 0..3 {
        let (status, again) = app.send_json("sandbox", fixture(APPROVED)).await;
        assert_eq!(status, 200);
        assert_eq!(
            again,
            json!({"status": "duplicate", "event_id": "evt_az5sblvku4ge3dwpztvyizgcau"})
        );
    }
    app.sandbox.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.sandbox.received().len(), 1);
    app.stop().await;
}

async fn the_same_event_sent_many_times_at_once_is_accepted_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let answers = futures_util::future::join_all(
        (0..20).map(|_| app.send_json("sandbox", fixture(APPROVED))),
    )
    .await;
    let accepted = answers
        .iter()
        .filter(|(_, b)| b["status"] == "accepted")
        .count();
    let duplicates = answers
        .iter()
        .filter(|(_, b)| b["status"] == "duplicate")
        .count();
    assert!(answers.iter().all(|(status, _)| *status == 200));
    assert_eq!((accepted, duplicates), (1, 19));
    app.sandbox.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sandbox.received().len(), 1);
    app.stop().await;
}

async fn same_event_id_in_the_other_environment_is_not_a_duplicate(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = approved_event("evt_both");
    let (_, a) = app.send_json("sandbox", body.clone()).await;
    let (_, b) = app.send_json("production", body).await;
    assert_eq!(a["status"], "accepted");
    assert_eq!(b["status"], "accepted");
    app.stop().await;
}

async fn every_rotated_key_is_accepted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut n = 0;
    for auth in [SANDBOX_AUTH, SANDBOX_AUTH_NEW] {
        for key in [SANDBOX_SIG, SANDBOX_SIG_NEW] {
            n += 1;
            let body = approved_event(&format!("evt_rot{n}"));
            let sig = sign(key, &body);
            let (status, b) = answer(
                app.post(
                    "/webhooks/checkoutdotcom/sandbox",
                    body,
                    Some(auth),
                    Some(&sig),
                )
                .await,
            )
            .await;
            assert_eq!((status, b["status"].as_str()), (200, Some("accepted")));
        }
    }
    app.sandbox.wait_for(4, Duration::from_secs(5)).await;
    app.stop().await;
}

/// Checkout.com sends lower-case hex; the same HMAC in upper case is the same
/// bytes, so it is accepted too, and forwarded as it came (Accelerate checks
/// the header itself).
async fn signature_in_upper_case_hex_is_accepted_and_forwarded_unchanged(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = approved_event("evt_upper");
    let sig = sign(SANDBOX_SIG, &body).to_uppercase();
    let (status, b) = answer(
        app.post(
            "/webhooks/checkoutdotcom/sandbox",
            body,
            Some(SANDBOX_AUTH),
            Some(&sig),
        )
        .await,
    )
    .await;
    assert_eq!((status, b["status"].as_str()), (200, Some("accepted")));
    let got = app.sandbox.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].header_str("cko-signature"), Some(sig.as_str()));
    app.stop().await;
}

async fn store_that_cannot_commit_answers_503_and_recovers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.db.refuse_inserts().await;

    let response = app.send("sandbox", approved_event("evt_503")).await;
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let (_, body) = answer(response).await;
    assert_eq!(body, json!({"error": "store_unavailable"}));
    assert!(app.status_on_disk("evt_503").await.is_none());

    app.db.allow_inserts().await;
    let (status, body) = app.send_json("sandbox", approved_event("evt_503")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("accepted")));
    app.sandbox.wait_for(1, Duration::from_secs(5)).await;
    app.stop().await;
}

async fn health_and_readiness(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for path in ["/healthz", "/readyz"] {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    let store = app.store.clone();
    app.stop().await;
    assert!(store.ping().await.is_err(), "a closed store is not ready");
}

/// The store holds card holder data and Authorization values: its files are
/// readable and writable by the relay's user only, whatever the umask, and a
/// file an older relay left open to others is narrowed at start.
#[tokio::test]
async fn sqlite_store_files_are_the_relays_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (status, _) = app.send_json("sandbox", approved_event("evt_mode")).await;
    assert_eq!(status, 200);
    let dir = app.db.dir.path().to_owned();
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    for name in ["relay.db", "relay.db-wal", "relay.db-shm", "relay.db.lock"] {
        assert_eq!(mode(name), 0o600, "{name}");
    }
    std::fs::set_permissions(dir.join("relay.db"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let app = app.restart().await;
    assert_eq!(mode("relay.db"), 0o600, "narrowed again at start");
    app.stop().await;
}

/// A background task that panics is restarted with backoff, and `/readyz`
/// says so (503, naming it) until it runs again.
#[tokio::test]
async fn a_background_task_that_panics_is_restarted_and_readyz_is_503_meanwhile() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    accelerate_relay::supervise::supervise("test task", app.health.clone(), stopped, move || {
        let runs = Arc::clone(&counted);
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) < 4 {
                panic!("deliberate panic in a background task");
            }
            std::future::pending::<()>().await
        }
    });
    let said = eventually(Duration::from_secs(3), || async {
        let response = app
            .client
            .get(format!("{}/readyz", app.address))
            .send()
            .await
            .expect("answer");
        let (status, body) = answer(response).await;
        status == 503 && body["tasks"] == json!(["test task"])
    })
    .await;
    assert!(said, "/readyz is 503 naming the task while it is down");
    // Restarted after each of its four panics (100 + 200 + 400 + 800 ms of backoff)…
    let restarted = eventually(Duration::from_secs(5), || async {
        runs.load(Ordering::SeqCst) == 5
    })
    .await;
    assert!(restarted, "restarted after each panic");
    // …and ready once it runs.
    let back = eventually(Duration::from_secs(2), || async {
        readyz(&app.client, &app.address).await == 200
    })
    .await;
    assert!(back, "ready again once the task runs");
    // Webhooks are still accepted meanwhile and after.
    let (status, body) = app.send_json("sandbox", approved_event("evt_sup")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("accepted")));
    let _ = stop.send(true);
    app.stop().await;
}

on_both_stores!(
    unconfigured_or_unknown_environment_is_404,
    bare_url_is_the_only_configured_environment,
    bare_url_is_404_when_both_environments_are_configured,
    body_over_the_limit_is_413_before_any_key_is_checked,
    missing_or_wrong_authorization_is_401_unauthorized,
    missing_bad_or_foreign_signature_is_401_invalid_signature,
    body_that_is_not_an_event_is_400_malformed,
    duplicated_keys_on_the_read_path_are_400_malformed,
    control_characters_are_refused_without_harming_other_webhooks,
    a_row_the_database_refuses_fails_alone_not_its_group,
    other_event_types_are_ignored_and_never_stored,
    configured_event_types_are_the_ones_relayed,
    events_without_a_token_are_ignored_and_never_stored,
    accepted_event_is_on_disk_when_answered,
    resent_event_is_duplicate_and_forwarded_once,
    the_same_event_sent_many_times_at_once_is_accepted_once,
    same_event_id_in_the_other_environment_is_not_a_duplicate,
    every_rotated_key_is_accepted,
    signature_in_upper_case_hex_is_accepted_and_forwarded_unchanged,
    store_that_cannot_commit_answers_503_and_recovers,
    health_and_readiness,
);
