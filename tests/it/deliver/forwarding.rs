//! What reaches Accelerate: the body byte for byte with its headers, each
//! environment to its own URL.

use std::time::Duration;

use super::WAIT;
use crate::common::*;

async fn fixtures_reach_accelerate_byte_for_byte_with_their_headers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (name, env) in RELAYED {
        let body = fixture(name);
        let (auth, key) = keys_for(env);
        let sig = sign(key, &body);
        let response = app
            .client
            .post(format!("{}/webhooks/checkoutdotcom/{env}", app.address))
            .header("content-type", "application/json; charset=utf-8")
            .header("authorization", auth)
            .header("cko-signature", &sig)
            .header("cko-request-id", format!("req-{name}"))
            .header("x-not-forwarded", "1")
            .body(body.clone())
            .send()
            .await
            .expect("answer");
        let (status, answer_body) = answer(response).await;
        assert_eq!(
            (status, answer_body["status"].as_str()),
            (200, Some("accepted")),
            "{name}"
        );
        let mock = if *env == "sandbox" {
            &app.sandbox
        } else {
            &app.production
        };
        let request_id = format!("req-{name}");
        let got = mock
            .wait_until(WAIT, |r| {
                r.header_str("cko-request-id") == Some(&request_id)
            })
            .await;
        assert_eq!(got.body.as_ref(), body.as_slice(), "{name}: bytes changed");
        assert_eq!(got.path, "/webhooks/checkoutdotcom");
        assert_eq!(
            got.header_str("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(got.header_str("authorization"), Some(auth));
        assert_eq!(got.header_str("cko-signature"), Some(sig.as_str()));
        assert_eq!(
            got.header_str("user-agent"),
            Some(concat!("accelerate-relay/", env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(
            got.header_str("x-relay-delivery-id"),
            answer_body["delivery_id"].as_str()
        );
        assert_eq!(got.header_str("x-relay-attempt"), Some("1"));
        assert!(got.header("x-not-forwarded").is_none());
        // Accelerate can verify what it got with the same key.
        assert_eq!(sign(key, &got.body), sig);
    }
    let sandbox = app.sandbox.received().len();
    let production = app.production.received().len();
    assert_eq!((sandbox, production), (3, 2));
    app.stop().await;
}

async fn sandbox_and_production_never_cross(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for i in 0..5 {
        app.send("sandbox", approved_event(&format!("evt_sbx{i}")))
            .await;
        app.send("production", approved_event(&format!("evt_prd{i}")))
            .await;
    }
    let sandbox = app.sandbox.wait_for(5, WAIT).await;
    let production = app.production.wait_for(5, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sandbox.received().len(), 5);
    assert_eq!(app.production.received().len(), 5);
    assert!(sandbox
        .iter()
        .all(|r| String::from_utf8_lossy(&r.body).contains("evt_sbx")));
    assert!(production
        .iter()
        .all(|r| String::from_utf8_lossy(&r.body).contains("evt_prd")));
    assert!(production
        .iter()
        .all(|r| r.header_str("authorization") == Some(PRODUCTION_AUTH)));
    app.stop().await;
}

on_both_stores!(
    fixtures_reach_accelerate_byte_for_byte_with_their_headers,
    sandbox_and_production_never_cross,
);
