//! Card holder data sealed at rest (`RELAY_STORE_KEY`), on both stores:
//! nothing readable in the files or a dump, the same bytes forwarded,
//! rotation and conversion of a clear store under load, tampered and
//! swapped rows refused, a missing key refused at start-up.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use accelerate_relay::config::Config;
use accelerate_relay::seal::StoreKeys;
use accelerate_relay::store::DeliveryId;
use accelerate_relay::Application;
use common::mock::Reply;
use common::*;

const KEY_A: &str = "6f1c9a0e3b5d7f2a4c6e8b0d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f90";
/// The same kind of key in base64.
const KEY_B: &str = "q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k=";
const WAIT: Duration = Duration::from_secs(30);
/// Sealed with `KEY_A`; dead after three attempts 100 ms apart.
const SEALED_SHORT_SCHEDULE: &[(&str, &str)] = &[
    ("RELAY_STORE_KEY", KEY_A),
    ("RELAY_RETRY_SCHEDULE", "100ms,100ms"),
];

fn key_id(key: &str) -> String {
    StoreKeys::parse(key)
        .expect("a test key")
        .current()
        .to_string()
}

/// Neither card holder data nor an Authorization key in what the store
/// leaves at rest.
fn assert_nothing_readable(db: &common::db::TestDb) {
    let at_rest = db.at_rest_bytes();
    let secrets = [SANDBOX_AUTH, PRODUCTION_AUTH];
    assert_eq!(
        found_in(&at_rest, &CARD_HOLDER_DATA),
        None,
        "card holder data at rest"
    );
    assert_eq!(found_in(&at_rest, &secrets), None, "a key at rest");
}

/// Sends `n` card holder events to `env`; returns each body by event id.
async fn send_events(app: &TestApp, env: &str, prefix: &str, n: usize) -> HashMap<String, Vec<u8>> {
    let mut sent = HashMap::new();
    for i in 0..n {
        let id = format!("evt_{prefix}_{i}");
        let body = card_holder_event(&id);
        let (status, answer) = app.send_json(env, body.clone()).await;
        assert_eq!(status, 200, "{id}: {answer}");
        sent.insert(id, body);
    }
    sent
}

/// Every event of `sent` arrived at `mock` answered 200 exactly once, with
/// the bytes and headers it was sent with.
async fn delivered_as_sent(
    mock: &common::mock::MockAccelerate,
    env: &str,
    sent: &HashMap<String, Vec<u8>>,
) {
    let arrived = eventually(WAIT, || async {
        let delivered = mock.received().into_iter().filter(|r| r.answered == 200);
        delivered
            .map(|r| r.event_id())
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= sent.len()
    })
    .await;
    assert!(arrived, "all {} events delivered", sent.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (auth, signature_key) = keys_for(env);
    let mut times: HashMap<String, usize> = HashMap::new();
    for received in mock.received().iter().filter(|r| r.answered == 200) {
        let id = received.event_id();
        let Some(body) = sent.get(&id) else { continue };
        assert_eq!(&received.body[..], &body[..], "{id}: the same bytes");
        assert_eq!(received.header_str("authorization"), Some(auth), "{id}");
        assert_eq!(
            received.header_str("cko-signature"),
            Some(sign(signature_key, body).as_str()),
            "{id}"
        );
        assert_eq!(
            received.header_str("content-type"),
            Some("application/json"),
            "{id}"
        );
        *times.entry(id).or_default() += 1;
    }
    assert!(times.values().all(|n| *n == 1), "exactly once: {times:?}");
    assert_eq!(times.len(), sent.len());
}

async fn sealed_with(db: &common::db::TestDb, key: &str) -> i64 {
    db.scalar(&format!(
        "SELECT COUNT(*) FROM deliveries WHERE sealed_by = '{}' AND format = 2",
        key_id(key)
    ))
    .await
}

/// The rotation: `KEY_B` put first, `during` done while the sweep moves every
/// row to it, the metric seen at 0, then `KEY_A` dropped.
async fn rotate_from_a_to_b(app: TestApp, during: impl AsyncFnOnce(&TestApp)) -> TestApp {
    let key_list = format!("{KEY_B},{KEY_A}");
    let app = app.restart_with(&[("RELAY_STORE_KEY", &key_list)]).await;
    during(&app).await;
    let total = app.db.count().await;
    let moved = eventually(WAIT, || async {
        sealed_with(&app.db, KEY_B).await == total
    })
    .await;
    assert!(moved, "every row moved to the new key");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("accelerate_relay_store_rows_to_seal 0"),
        "{metrics}"
    );
    app.restart_with(&[("RELAY_STORE_KEY", KEY_B)]).await
}

/// Accepted, delivered, retried and dead, then a rotation, then the dead one
/// replayed under the new key alone: nothing readable at rest at any point,
/// and Accelerate gets the bytes and headers Checkout.com sent.
async fn sealed_at_rest_and_forwarded_unchanged(backend: Backend) {
    let app = TestApp::spawn_with(backend, SEALED_SHORT_SCHEDULE).await;
    // Sandbox: the first attempt fails (a retry), then every one is delivered.
    app.sandbox.script([Reply::Status(503)]);
    app.sandbox.set_default(Reply::Status(200));
    // Production: never answers 2xx, so its event goes dead.
    app.production.set_default(Reply::Status(500));
    let sandbox = send_events(&app, "sandbox", "sealed", 5).await;
    let production = send_events(&app, "production", "dead", 1).await;
    delivered_as_sent(&app.sandbox, "sandbox", &sandbox).await;
    assert!(
        app.reaches_status("evt_dead_0", "dead", WAIT).await,
        "the production event goes dead"
    );
    assert!(
        app.sandbox.received().iter().any(|r| r.answered == 503),
        "one was retried"
    );
    assert_eq!(sealed_with(&app.db, KEY_A).await, 6, "every row sealed");
    assert_nothing_readable(&app.db);

    // Rotation, then the old key dropped; the dead event replayed is
    // still the same bytes.
    let app = rotate_from_a_to_b(app, async |_| {}).await;
    app.production.set_default(Reply::Status(200));
    let id: i64 = app
        .db
        .scalar("SELECT id FROM deliveries WHERE event_id = 'evt_dead_0'")
        .await;
    app.store
        .retry(DeliveryId(id), accelerate_relay::store::Timestamp::now())
        .await
        .expect("retry");
    delivered_as_sent(&app.production, "production", &production).await;
    assert_nothing_readable(&app.db);
    app.stop().await;
}

/// A row altered in the database, or given another row's sealed body, is
/// refused with a reason and never forwarded; the others go as always.
async fn tampered_or_swapped_rows_are_refused(backend: Backend) {
    let app = TestApp::spawn_with(backend, SEALED_SHORT_SCHEDULE).await;
    app.sandbox.set_default(Reply::Status(503));
    let sent = send_events(&app, "sandbox", "rows", 3).await;
    let app = app
        .restart_after(async |db| {
            let mut tampered = db.blob("evt_rows_0", "headers").await;
            let last = tampered.len() - 1;
            tampered[last] ^= 1;
            db.set_blob("evt_rows_0", "headers", &tampered).await;
            let other = db.blob("evt_rows_2", "body").await;
            db.set_blob("evt_rows_1", "body", &other).await;
            db.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, attempts_base = 0, \
                 next_attempt_at = 0, leased_until = NULL",
            )
            .await;
        })
        .await;
    let seen_before = app.sandbox.received().len();
    app.sandbox.set_default(Reply::Status(200));
    let good: HashMap<String, Vec<u8>> = sent
        .iter()
        .filter(|(id, _)| id.as_str() == "evt_rows_2")
        .map(|(id, body)| (id.clone(), body.clone()))
        .collect();
    delivered_as_sent(&app.sandbox, "sandbox", &good).await;
    for id in ["evt_rows_0", "evt_rows_1"] {
        assert!(
            app.reaches_status(id, "dead", WAIT).await,
            "{id} kept, not sent"
        );
        let error = app
            .db
            .column(id, "last_error")
            .await
            .flatten()
            .unwrap_or_default();
        assert!(
            error.contains("does not open with store key") && error.contains("altered or moved"),
            "{id}: {error}"
        );
    }
    let after: Vec<String> = app.sandbox.received()[seen_before..]
        .iter()
        .map(|r| r.event_id())
        .collect();
    assert_eq!(after, ["evt_rows_2"], "only the intact row was sent");
    assert_eq!(app.db.count().await, 3, "every row stays stored");
    app.stop().await;
}

/// Sealed rows whose key is not configured stop the relay at start-up, with
/// the key id, the row count and what to do.
async fn a_missing_key_stops_start_up(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_STORE_KEY", KEY_A)]).await;
    app.sandbox.set_default(Reply::Status(503));
    send_events(&app, "sandbox", "missing", 2).await;
    let vars = with_overrides(
        base_vars(&app.sandbox, &app.production, app.db.url()),
        &[("RELAY_STORE_KEY", KEY_B)],
    );
    let without = with_overrides(vars.clone(), &[("RELAY_STORE_KEY", "")]);
    // While the relay is stopped: started with another key, or none.
    let app = app
        .restart_after(async |_| {
            for vars in [vars, without] {
                let config = Config::from_vars(vars).expect("valid configuration");
                let refused = match Application::build(config).await {
                    Ok(_) => panic!("started without the key its rows need"),
                    Err(e) => format!("{:#}", anyhow::Error::from(e)),
                };
                assert!(
                    refused.contains(&key_id(KEY_A))
                        && refused.contains("(2 deliveries)")
                        && refused.contains("RELAY_STORE_KEY"),
                    "{refused}"
                );
            }
        })
        .await;
    // With its key it starts, and the rows are as they were.
    assert_eq!(app.db.count().await, 2);
    app.stop().await;
    // A key that is not 256 bits is a configuration error naming the variable.
    let error = config_error(&[("RELAY_STORE_KEY", "not-a-key")]);
    assert!(
        error.starts_with("RELAY_STORE_KEY: key 1 is not 256 bits"),
        "{error}"
    );
}

/// A store kept in clear, converted when a key is set while webhooks keep
/// coming, then rotated under load too: nothing lost, nothing sent twice,
/// nothing readable left.
async fn a_clear_store_is_sealed_and_rotated_under_load(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.sandbox.set_default(Reply::Status(503));
    let mut sent = send_events(&app, "sandbox", "clear", 20).await;
    // History enough for more than one sweep (2,000 rows each).
    app.db.fill_delivered(4_500).await;
    assert!(found_in(&app.db.at_rest_bytes(), &CARD_HOLDER_DATA).is_some());

    let app = app.restart_with(&[("RELAY_STORE_KEY", KEY_A)]).await;
    sent.extend(send_events(&app, "sandbox", "converting", 30).await);
    let clear = "SELECT COUNT(*) FROM deliveries WHERE sealed_by IS NULL";
    let converted = eventually(WAIT, || async { app.db.scalar(clear).await == 0 }).await;
    assert!(converted, "every clear row sealed");

    let app = rotate_from_a_to_b(app, async |app| {
        sent.extend(send_events(app, "sandbox", "rotating", 30).await);
    })
    .await;
    app.sandbox.set_default(Reply::Status(200));
    delivered_as_sent(&app.sandbox, "sandbox", &sent).await;
    let gone = eventually(Duration::from_secs(5), || async {
        found_in(&app.db.at_rest_bytes(), &CARD_HOLDER_DATA).is_none()
    })
    .await;
    // SQLite: not in free pages nor the WAL. PostgreSQL keeps dead tuples
    // until VACUUM (the README says so); a dump never holds them.
    assert!(gone, "no card holder data left at rest");
    assert_nothing_readable(&app.db);
    app.stop().await;
}

on_both_stores!(
    sealed_at_rest_and_forwarded_unchanged,
    tampered_or_swapped_rows_are_refused,
    a_missing_key_stops_start_up,
    a_clear_store_is_sealed_and_rotated_under_load,
);
