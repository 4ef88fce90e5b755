//! Authorization values as key references: the store names the key, never
//! holds it; a removed key is replaced; older rows are converted.

use std::time::Duration;

use super::WAIT;
use crate::common::*;

/// A relay whose failed deliveries wait a second between attempts, for ten.
async fn patient(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, &[("RELAY_RETRY_SCHEDULE", &["1s"; 10].join(","))]).await
}

/// Sends `id` with the sandbox's second Authorization key while Accelerate
/// fails, so it waits in the store.
async fn waiting_with_the_second_key(app: &TestApp, id: &str) -> Vec<u8> {
    app.sandbox.set_default(Reply::Status(503));
    let body = approved_event(id);
    let response = post_signed_with(
        &app.client,
        &app.address,
        "sandbox",
        body.clone(),
        SANDBOX_AUTH_NEW,
        SANDBOX_SIG,
    )
    .await
    .expect("answer");
    assert_eq!(response.status().as_u16(), 200);
    assert!(eventually(WAIT, || async { !app.sandbox.received().is_empty() }).await);
    body
}

/// Lets Accelerate answer, and returns the Authorization `id` was delivered with.
async fn delivered_authorization(app: &TestApp, id: &str) -> String {
    app.sandbox.set_default(Reply::Status(200));
    let within = Duration::from_secs(20);
    assert!(
        app.reaches_status(id, "delivered", within).await,
        "{id} delivered"
    );
    let received = app.sandbox.received();
    let last = received
        .iter()
        .rev()
        .find(|r| r.event_id() == id)
        .expect("received");
    let value = last
        .header_str("authorization")
        .expect("an Authorization header");
    value.to_owned()
}

async fn the_store_names_the_key_and_never_holds_it(backend: Backend) {
    let app = patient(backend).await;
    waiting_with_the_second_key(&app, "evt_key_ref").await;
    let stored = app.db.headers("evt_key_ref").await;
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.contains("=authorization:1:"),
        "a reference to key 1: {text}"
    );
    assert!(
        !text.contains("sbx-authorization-key"),
        "no key in the row: {text}"
    );
    let files = String::from_utf8_lossy(&app.db.sqlite_files()).into_owned();
    assert!(
        !files.contains("sbx-authorization-key"),
        "no key anywhere in the SQLite files"
    );
    assert_eq!(
        delivered_authorization(&app, "evt_key_ref").await,
        SANDBOX_AUTH_NEW
    );
    app.stop().await;
}

async fn a_key_removed_while_its_event_waited_is_replaced_by_the_first(backend: Backend) {
    let app = patient(backend).await;
    waiting_with_the_second_key(&app, "evt_key_gone").await;
    let app = app
        .restart_with(&[("CKO_SANDBOX_AUTHORIZATION_KEY", "sbx-authorization-key-3")])
        .await;
    assert_eq!(
        delivered_authorization(&app, "evt_key_gone").await,
        "sbx-authorization-key-3"
    );
    app.stop().await;
}

/// Makes `id`'s row look as a release before key references wrote it (the
/// value itself) and before the fence (format 0).
fn as_an_older_release_wrote_it(backend: Backend, id: &str) -> String {
    let legacy = format!("content-type:application/json\nauthorization:{SANDBOX_AUTH_NEW}\n");
    let blob = hex::encode(legacy.as_bytes());
    let value = match backend {
        Backend::Sqlite => format!("X'{blob}'"),
        Backend::Postgres => format!("decode('{blob}', 'hex')"),
    };
    format!("UPDATE deliveries SET headers = {value}, format = 0 WHERE event_id = '{id}'")
}

fn assert_converted(stored: &[u8]) {
    let stored = String::from_utf8_lossy(stored);
    assert_eq!(stored.matches("=authorization:1:").count(), 1, "{stored}");
    assert!(!stored.contains(SANDBOX_AUTH_NEW), "{stored}");
}

/// Rows an older release wrote, before this one started and while it runs
/// (an older replica beside it during a rolling upgrade): each is converted,
/// at start or by the sweep within seconds, and delivered with its own key.
async fn rows_of_an_older_format_are_converted_at_start_and_while_running(backend: Backend) {
    let app = patient(backend).await;
    waiting_with_the_second_key(&app, "evt_legacy").await;
    let set = as_an_older_release_wrote_it(backend, "evt_legacy");
    let app = app.restart_after(async |db| db.execute(&set).await).await;
    assert_converted(&app.db.headers("evt_legacy").await);

    // Written while this one runs: no marker to outlive, the sweep finds it.
    waiting_with_the_second_key(&app, "evt_legacy_late").await;
    app.db
        .execute(&as_an_older_release_wrote_it(backend, "evt_legacy_late"))
        .await;
    let converted = eventually(Duration::from_secs(10), || async {
        let stored = app.db.headers("evt_legacy_late").await;
        !String::from_utf8_lossy(&stored).contains(SANDBOX_AUTH_NEW)
    })
    .await;
    assert!(converted, "converted by the sweep within 10 s");
    assert_converted(&app.db.headers("evt_legacy_late").await);
    if backend == Backend::Sqlite {
        // Neither in freed space nor in the WAL's older frames.
        let cleared = eventually(Duration::from_secs(5), || async {
            let files = app.db.sqlite_files();
            !files
                .windows(SANDBOX_AUTH_NEW.len())
                .any(|w| w == SANDBOX_AUTH_NEW.as_bytes())
        })
        .await;
        assert!(cleared, "the key's bytes are gone from the SQLite files");
    }
    for id in ["evt_legacy", "evt_legacy_late"] {
        assert_eq!(delivered_authorization(&app, id).await, SANDBOX_AUTH_NEW);
    }
    app.stop().await;
}

on_both_stores!(
    the_store_names_the_key_and_never_holds_it,
    a_key_removed_while_its_event_waited_is_replaced_by_the_first,
    rows_of_an_older_format_are_converted_at_start_and_while_running,
);
