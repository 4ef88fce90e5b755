//! The delivery workers: concurrency, the hand-over from the receive path,
//! and claims from the store for what does not fit in memory.

use std::collections::HashMap;
use std::time::Duration;

use super::WAIT;
use crate::common::*;

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
    let id = app.store.list(&Default::default()).await.expect("list")[0].id;
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

on_both_stores!(
    two_hundred_concurrent_events_are_each_delivered_once,
    worker_step_reports_what_it_did,
    attempts_in_flight_never_exceed_the_concurrency,
    an_accepted_event_goes_out_from_memory_without_a_claim,
    events_beyond_the_workers_queue_are_claimed_from_the_store,
);
