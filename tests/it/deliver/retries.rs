//! Failed, slow and refused attempts, Retry-After, the schedule used up, and
//! a clean shutdown that spends no attempt.

use std::time::Duration;

use super::WAIT;
use crate::common::*;

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
        .expect("next attempt")
        .to_system_time();
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

on_both_stores!(
    failed_attempt_is_retried_with_the_next_attempt_number,
    slow_accelerate_times_out_and_is_retried,
    accelerate_down_then_back_gets_every_event,
    retry_after_on_429_and_503_is_honoured,
    retry_after_on_other_statuses_is_not_a_reason_to_wait,
    retry_after_beyond_any_number_waits_the_cap,
    clean_shutdown_spends_no_attempt_it_never_made,
    delivery_is_dead_when_the_schedule_is_used_up_and_kept,
);
