//! Every delivery rule of the contract, observed at a mock Accelerate.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(10);

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

async fn failed_attempt_is_retried_with_the_next_attempt_number(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.sandbox.script([Reply::Status(500), Reply::Status(404)]);
    app.send("sandbox", approved_event("evt_retry")).await;
    let got = app.sandbox.wait_for(3, WAIT).await;
    let attempts: Vec<_> = got
        .iter()
        .map(|r| r.header_str("x-relay-attempt").unwrap_or(""))
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(got.windows(2).all(|w| w[0].body == w[1].body));
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.header_str("x-relay-delivery-id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    // The schedule is 100ms then 200ms (+ up to 10%).
    assert!(got[1].at - got[0].at >= Duration::from_millis(100));
    assert!(got[2].at - got[1].at >= Duration::from_millis(200));
    assert!(app.reaches_status("evt_retry", "delivered", WAIT).await);
    app.stop().await;
}

async fn slow_accelerate_times_out_and_is_retried(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_DELIVERY_TIMEOUT_MS", "300")]).await;
    app.sandbox
        .script([Reply::Slow(Duration::from_secs(2), 200)]);
    app.send("sandbox", approved_event("evt_slow")).await;
    let got = app.sandbox.wait_for(2, WAIT).await;
    assert_eq!(got[1].header_str("x-relay-attempt"), Some("2"));
    // Second attempt went out after the timeout, not after the slow answer.
    assert!(got[1].at - got[0].at < Duration::from_millis(1500));
    assert!(app.reaches_status("evt_slow", "delivered", WAIT).await);
    app.stop().await;
}

async fn accelerate_down_then_back_gets_every_event(backend: Backend) {
    // A port nobody listens on yet: connection refused until the mock starts there.
    let down = process::ClosedPort::new();
    let url = format!("http://127.0.0.1:{}/webhooks/checkoutdotcom", down.port());
    // Ten seconds of retries: the outage must not outlast them on a slow
    // machine, or the events are (rightly) dead before Accelerate is back.
    let patient = vec!["200ms"; 50].join(",");
    let app = TestApp::spawn_with(
        backend,
        &[
            ("ACCELERATE_SANDBOX_URL", &url),
            ("RELAY_RETRY_SCHEDULE", &patient),
        ],
    )
    .await;
    for i in 0..3 {
        let (status, _) = app
            .send_json("sandbox", approved_event(&format!("evt_down{i}")))
            .await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back = MockAccelerate::start_on(down.listen()).await;
    let got = back.wait_for(3, WAIT).await;
    assert!(
        got.iter()
            .all(|r| r.header_str("x-relay-attempt") != Some("1")),
        "the first attempts failed"
    );
    for i in 0..3 {
        let id = format!("evt_down{i}");
        assert!(app.reaches_status(&id, "delivered", WAIT).await);
    }
    app.stop().await;
}

async fn retry_after_on_429_and_503_is_honoured(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_RETRY_SCHEDULE", "50ms,50ms,50ms")]).await;
    // HTTP dates have whole seconds: 3 s ahead is 2-3 s ahead, so still at
    // least ~1 s after the 429's one-second wait ends.
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
    app.sandbox.script([
        Reply::RetryAfter(429, "1".into()),
        Reply::RetryAfter(503, date),
    ]);
    app.send("sandbox", approved_event("evt_ra")).await;
    let got = app.sandbox.wait_for(3, WAIT).await;
    let first_wait = got[1].at - got[0].at;
    assert!(
        first_wait >= Duration::from_secs(1),
        "429 Retry-After: 1 waited {first_wait:?}"
    );
    assert!(
        first_wait < Duration::from_millis(1500),
        "waited {first_wait:?}"
    );
    let second_wait = got[2].at - got[1].at;
    assert!(
        second_wait >= Duration::from_millis(500),
        "503 Retry-After date waited {second_wait:?}"
    );
    app.stop().await;
}

async fn retry_after_on_other_statuses_is_not_a_reason_to_wait(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_RETRY_SCHEDULE", "50ms")]).await;
    app.sandbox.script([Reply::RetryAfter(500, "30".into())]);
    app.send("sandbox", approved_event("evt_ra500")).await;
    let got = app.sandbox.wait_for(2, WAIT).await;
    assert!(got[1].at - got[0].at < Duration::from_secs(5));
    app.stop().await;
}

/// A `Retry-After` too large to be a number of seconds is still a wait: the cap.
async fn retry_after_beyond_any_number_waits_the_cap(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_RETRY_SCHEDULE", "100ms")]).await;
    app.sandbox
        .script([Reply::RetryAfter(503, "99999999999999999999".into())]);
    app.send("sandbox", approved_event("evt_ra_huge")).await;
    app.sandbox.wait_for(1, WAIT).await;
    let filter = accelerate_relay::store::ListFilter {
        event_id: Some("evt_ra_huge".into()),
        ..Default::default()
    };
    let failed_once =
        |d: &accelerate_relay::store::Delivery| d.attempts == 1 && d.last_error.is_some();
    let recorded = eventually(WAIT, || async {
        app.store
            .list(&filter)
            .await
            .expect("list")
            .iter()
            .any(failed_once)
    })
    .await;
    assert!(recorded, "the failed attempt is recorded");
    let next = app.store.list(&filter).await.expect("list")[0]
        .next_attempt_at
        .clone();
    let next = humantime::parse_rfc3339(&next.expect("next attempt")).expect("RFC 3339");
    let wait = next
        .duration_since(std::time::SystemTime::now())
        .expect("in the future");
    assert!(
        wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3960),
        "waits {wait:?}, the one-hour cap (+10% jitter at most)"
    );
    assert_eq!(app.sandbox.received().len(), 1);
    app.stop().await;
}

/// A clean shutdown gives back what was claimed ahead and not started: after
/// the restart its first real attempt is attempt 1, and it goes out at once
/// (not after its lease, which on PostgreSQL outlived the shutdown).
async fn clean_shutdown_spends_no_attempt_it_never_made(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("RELAY_DELIVERY_CONCURRENCY", "1"),
            ("RELAY_RETRY_SCHEDULE", "1s"),
        ],
    )
    .await;
    // The first attempt holds the only sending slot while the next is claimed.
    app.sandbox
        .script([Reply::Slow(Duration::from_millis(1500), 200)]);
    app.send("sandbox", approved_event("evt_sd1")).await;
    app.sandbox.wait_for(1, WAIT).await;
    app.send("sandbox", approved_event("evt_sd2")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let app = app.restart().await;
    let filter = accelerate_relay::store::ListFilter {
        event_id: Some("evt_sd2".into()),
        ..Default::default()
    };
    assert!(
        app.reaches_status("evt_sd2", "delivered", Duration::from_secs(5))
            .await
    );
    let got = app.sandbox.received();
    let second: Vec<_> = got.iter().filter(|r| r.event_id() == "evt_sd2").collect();
    assert_eq!(second.len(), 1, "one attempt");
    assert_eq!(second[0].header_str("x-relay-attempt"), Some("1"));
    let stored = app.store.list(&filter).await.expect("list");
    assert_eq!(stored[0].attempts, 1, "attempts counts attempts made");
    assert!(app.reaches_status("evt_sd1", "delivered", WAIT).await);
    app.stop().await;
}

async fn delivery_is_dead_when_the_schedule_is_used_up_and_kept(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_RETRY_SCHEDULE", "50ms,50ms")]).await;
    app.sandbox.set_default(Reply::Status(500));
    app.send("sandbox", approved_event("evt_dead")).await;
    app.sandbox.wait_for(3, WAIT).await;
    assert!(app.reaches_status("evt_dead", "dead", WAIT).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.sandbox.received().len(),
        3,
        "no attempt after the schedule"
    );

    let dead = app
        .store
        .list(&accelerate_relay::store::ListFilter {
            status: Some(accelerate_relay::store::Status::Dead),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, "evt_dead");
    assert_eq!(dead[0].attempts, 3);
    assert!(dead[0]
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("500")));
    assert!(
        !dead[0].accelerate_token.contains("0123456789"),
        "token is redacted"
    );

    // Replayable: a retry gets the whole schedule again and is delivered.
    app.sandbox.set_default(Reply::Status(200));
    let n = app
        .store
        .retry_dead(accelerate_relay::store::Timestamp::now(), None)
        .await
        .expect("retry dead");
    assert_eq!(n, 1);
    let got = app.sandbox.wait_for(4, WAIT).await;
    assert_eq!(got[3].header_str("x-relay-attempt"), Some("4"));
    assert!(app.reaches_status("evt_dead", "delivered", WAIT).await);
    app.stop().await;
}

async fn two_hundred_concurrent_events_are_each_delivered_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let app = std::sync::Arc::clone(&app);
        tasks.push(tokio::spawn(async move {
            let env = if i % 2 == 0 { "sandbox" } else { "production" };
            let (status, body) = app
                .send_json(env, approved_event(&format!("evt_c{i:03}")))
                .await;
            (status, body["status"].as_str().map(str::to_owned))
        }));
    }
    for task in tasks {
        assert_eq!(
            task.await.expect("task"),
            (200, Some("accepted".to_owned()))
        );
    }
    app.sandbox.wait_for(100, WAIT).await;
    app.production.wait_for(100, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for id in app
        .sandbox
        .event_ids()
        .into_iter()
        .chain(app.production.event_ids())
    {
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), 200);
    assert!(
        seen.values().all(|n| *n == 1),
        "an event was delivered twice"
    );
    std::sync::Arc::into_inner(app)
        .expect("sole owner")
        .stop()
        .await;
}

async fn worker_step_reports_what_it_did(backend: Backend) {
    use accelerate_relay::deliver::{Step, Worker};
    // A second worker on the same store, driven by hand while the app's own
    // worker is busy elsewhere: the store's leases keep them from colliding.
    let app = TestApp::spawn_with(backend, &[("RELAY_RETRY_SCHEDULE", "1h")]).await;
    app.sandbox.set_default(Reply::Status(500));
    app.send("sandbox", approved_event("evt_step")).await;
    app.sandbox.wait_for(1, WAIT).await;
    let config = accelerate_relay::config::Config::from_vars(with_overrides(
        base_vars(&app.sandbox, &app.production, "sqlite://unused.db"),
        &[("RELAY_RETRY_SCHEDULE", "1h")],
    ))
    .expect("config");
    let gate = accelerate_relay::control::Gate::new(&config, app.store.clone(), None);
    let worker = Worker::new(&config, app.store.clone(), Default::default(), gate).expect("worker");
    // The only delivery waits an hour: nothing is due.
    assert_eq!(worker.deliver_next().await.expect("step"), Step::Empty);
    let id = app.store.list(&Default::default()).await.expect("list")[0]
        .id
        .parse()
        .expect("id");
    // Once the first attempt is recorded (a retry is refused while it is
    // in flight).
    let retried = eventually(WAIT, || async {
        app.store
            .retry(id, accelerate_relay::store::Timestamp::now())
            .await
            .expect("retry")
            == accelerate_relay::store::Retried::Due
    })
    .await;
    assert!(retried, "the retry was refused");
    app.sandbox.set_default(Reply::Status(200));
    let step = worker.deliver_next().await.expect("step");
    // The app's own worker may have been quicker; either way it is delivered once more.
    assert!(matches!(step, Step::Delivered | Step::Empty), "{step:?}");
    assert!(app.reaches_status("evt_step", "delivered", WAIT).await);
    app.stop().await;
}

/// However many events wait, no more than RELAY_DELIVERY_CONCURRENCY attempts
/// talk to Accelerate at once.
async fn attempts_in_flight_never_exceed_the_concurrency(backend: Backend) {
    const SLOW: Duration = Duration::from_millis(300);
    let app = TestApp::spawn_with(backend, &[("RELAY_DELIVERY_CONCURRENCY", "2")]).await;
    app.sandbox.set_default(Reply::Slow(SLOW, 200));
    let app = std::sync::Arc::new(app);
    let sends = (0..10).map(|i| {
        let app = std::sync::Arc::clone(&app);
        async move {
            app.send("sandbox", approved_event(&format!("evt_cc{i}")))
                .await
        }
    });
    futures_util::future::join_all(sends).await;
    let mut got = app.sandbox.wait_for(10, WAIT).await;
    got.sort_by_key(|r| r.at);
    // With at most two in flight, request i+2 starts only after request i or
    // i+1 got its answer, which takes SLOW.
    for i in 0..got.len() - 2 {
        let gap = got[i + 2].at - got[i].at;
        assert!(gap >= SLOW, "requests {i} and {} only {gap:?} apart", i + 2);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.sandbox.received().len(), 10, "each event once");
    for i in 0..10 {
        let id = format!("evt_cc{i}");
        assert!(app.reaches_status(&id, "delivered", WAIT).await);
    }
    std::sync::Arc::into_inner(app)
        .expect("sole owner")
        .stop()
        .await;
}

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

/// The accepting relay inserts an event already claimed for its first attempt
/// and hands it to its worker in memory: delivered as attempt 1 with no claim
/// statement (the store refuses every claim here), byte for byte.
async fn an_accepted_event_goes_out_from_memory_without_a_claim(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.db.refuse_claims().await;
    let body = approved_event("evt_from_memory");
    let (status, _) = app.send_json("sandbox", body.clone()).await;
    assert_eq!(status, 200);
    assert!(
        app.reaches_status("evt_from_memory", "delivered", WAIT)
            .await,
        "delivered without a claim"
    );
    let received = app.sandbox.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body.as_ref(), body.as_slice());
    assert_eq!(received[0].header_str("x-relay-attempt"), Some("1"));
    assert_eq!(received[0].header_str("authorization"), Some(SANDBOX_AUTH));
    app.stop().await;
}

/// When the worker's queue is full, events are committed due and the poller
/// claims them: every event is still delivered exactly once, as attempt 1.
async fn events_beyond_the_workers_queue_are_claimed_from_the_store(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_DELIVERY_CONCURRENCY", "1")]).await;
    app.sandbox
        .set_default(Reply::Slow(Duration::from_millis(100), 200));
    let ids: Vec<String> = (0..20).map(|i| format!("evt_queue_{i}")).collect();
    let sends = ids
        .iter()
        .map(|id| app.send_json("sandbox", approved_event(id)));
    for (status, _) in futures_util::future::join_all(sends).await {
        assert_eq!(status, 200);
    }
    app.sandbox.wait_for(20, Duration::from_secs(20)).await;
    // A second delivery of any of them would arrive within this.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = app.sandbox.received();
    let mut seen: Vec<String> = received.iter().map(|r| r.event_id()).collect();
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected, "each event once");
    assert!(received
        .iter()
        .all(|r| r.header_str("x-relay-attempt") == Some("1")));
    app.stop().await;
}

/// The attempt that delivers is kept in the delivery row, not as a row of
/// `attempts`; the history shows it after the attempts that failed.
async fn the_delivering_attempt_is_in_the_history_without_a_row_of_its_own(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.send("sandbox", approved_event("evt_first_try")).await;
    assert!(app.reaches_status("evt_first_try", "delivered", WAIT).await);
    assert_eq!(
        app.db.count_rows("attempts").await,
        0,
        "no attempts row for a first-try delivery"
    );
    app.sandbox.script([Reply::Status(500), Reply::Status(502)]);
    app.send("sandbox", approved_event("evt_third_try")).await;
    assert!(app.reaches_status("evt_third_try", "delivered", WAIT).await);
    assert_eq!(app.db.count_rows("attempts").await, 2, "the two failures");
    for (id, expected) in [
        ("evt_first_try", vec![(1, Some(200), "delivered")]),
        (
            "evt_third_try",
            vec![
                (1, Some(500), "http_5xx"),
                (2, Some(502), "http_5xx"),
                (3, Some(200), "delivered"),
            ],
        ),
    ] {
        let history = history_of(&app, id, expected.len()).await;
        let history: Vec<(u32, Option<u16>, &str)> = history
            .iter()
            .map(|a| (a.attempt, a.http_status, a.outcome.as_str()))
            .collect();
        assert_eq!(history, expected, "{id}");
    }
    app.stop().await;
}

/// The attempt history of the one delivery of `event_id`, once it has `n` attempts.
async fn history_of(
    app: &TestApp,
    event_id: &str,
    n: usize,
) -> Vec<accelerate_relay::store::AttemptView> {
    let mut history = Vec::new();
    for _ in 0..200 {
        let listed = app
            .store
            .list(
                &accelerate_relay::store::ListFilter::parse([("event_id", event_id)])
                    .expect("filter"),
            )
            .await
            .expect("list");
        if let Some(found) = listed.first() {
            let detail = app
                .store
                .detail(found.id.parse().expect("id"))
                .await
                .expect("detail")
                .expect("found");
            history = detail.attempt_history;
            if history.len() >= n {
                return history;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{event_id}: {n} attempts expected, history {history:?}");
}

/// Each attempt's outcome and message.
fn outcomes(history: Vec<accelerate_relay::store::AttemptView>) -> Vec<(String, String)> {
    history
        .into_iter()
        .map(|a| (a.outcome, a.message.unwrap_or_default()))
        .collect()
}

/// The cause recorded for an event's first attempt, which must have failed
/// to connect.
async fn connect_failure(app: &TestApp, event_id: &str) -> String {
    let first = outcomes(history_of(app, event_id, 1).await).remove(0);
    assert_eq!(first.0, "connect", "{first:?}");
    match first.1.strip_prefix("could not connect to Accelerate: ") {
        Some(cause) => cause.to_owned(),
        None => panic!("{event_id}: {first:?}"),
    }
}

/// What went wrong is recorded as the kind the history and metrics name, with
/// its cause: a refused connection, a TLS URL whose server does not speak TLS
/// (`tls`: nothing reaches it as a request), no answer in time.
async fn each_kind_of_failure_is_named_in_the_history(backend: Backend) {
    let closed = process::ClosedPort::new();
    let refused = format!("http://127.0.0.1:{}/webhooks/checkoutdotcom", closed.port());
    let plain = MockAccelerate::start().await;
    let not_tls = plain.url().replacen("http://", "https://", 1);
    let app = TestApp::spawn_with(
        backend,
        &[
            ("ACCELERATE_SANDBOX_URL", &refused),
            ("ACCELERATE_PRODUCTION_URL", &not_tls),
            ("RELAY_RETRY_SCHEDULE", "1h"),
        ],
    )
    .await;
    app.send("sandbox", approved_event("evt_refused")).await;
    app.send("production", approved_event("evt_not_tls")).await;
    let refused = connect_failure(&app, "evt_refused").await;
    assert!(refused.contains("refused"), "{refused}");
    // A failed TLS handshake is an outcome of its own, saying what to check.
    let (kind, not_tls) = outcomes(history_of(&app, "evt_not_tls", 1).await).remove(0);
    assert_eq!(kind, "tls", "{not_tls}");
    assert!(
        not_tls.starts_with("TLS with Accelerate failed: ")
            && not_tls.contains("RELAY_ACCELERATE_CA_FILE")
            && !not_tls.contains("refused"),
        "{not_tls}"
    );
    assert!(plain.received().is_empty(), "no request over plain HTTP");
    app.stop().await;

    let app = TestApp::spawn_with(
        backend,
        &[
            ("RELAY_DELIVERY_TIMEOUT_MS", "300"),
            ("RELAY_RETRY_SCHEDULE", "1h"),
        ],
    )
    .await;
    app.sandbox
        .script([Reply::Slow(Duration::from_secs(2), 200)]);
    app.send("sandbox", approved_event("evt_slow_kind")).await;
    let slow = outcomes(history_of(&app, "evt_slow_kind", 1).await);
    assert_eq!(
        slow,
        [("timeout".to_owned(), "no answer within 300 ms".to_owned())]
    );
    app.stop().await;
}

on_both_stores!(
    each_kind_of_failure_is_named_in_the_history,
    the_delivering_attempt_is_in_the_history_without_a_row_of_its_own,
    an_accepted_event_goes_out_from_memory_without_a_claim,
    events_beyond_the_workers_queue_are_claimed_from_the_store,
    the_store_names_the_key_and_never_holds_it,
    a_key_removed_while_its_event_waited_is_replaced_by_the_first,
    rows_of_an_older_format_are_converted_at_start_and_while_running,
    retry_after_beyond_any_number_waits_the_cap,
    clean_shutdown_spends_no_attempt_it_never_made,
    attempts_in_flight_never_exceed_the_concurrency,
    fixtures_reach_accelerate_byte_for_byte_with_their_headers,
    sandbox_and_production_never_cross,
    failed_attempt_is_retried_with_the_next_attempt_number,
    slow_accelerate_times_out_and_is_retried,
    accelerate_down_then_back_gets_every_event,
    retry_after_on_429_and_503_is_honoured,
    retry_after_on_other_statuses_is_not_a_reason_to_wait,
    delivery_is_dead_when_the_schedule_is_used_up_and_kept,
    two_hundred_concurrent_events_are_each_delivered_once,
    worker_step_reports_what_it_did,
);
