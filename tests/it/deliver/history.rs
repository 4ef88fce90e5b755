//! The attempt history: the delivering attempt, and each kind of failure
//! named with its cause.

use std::time::Duration;

use super::WAIT;
use crate::common::*;

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
        let history = app.history_of(id, expected.len()).await;
        let history: Vec<(u32, Option<u16>, &str)> = history
            .iter()
            .map(|a| (a.attempt, a.http_status, a.outcome.as_str()))
            .collect();
        assert_eq!(history, expected, "{id}");
    }
    app.stop().await;
}

/// Each attempt's outcome and message.
fn outcomes(history: Vec<accelerate_relay::store::AttemptView>) -> Vec<(String, String)> {
    history
        .into_iter()
        .map(|a| (a.outcome.to_string(), a.message.unwrap_or_default()))
        .collect()
}

/// The cause recorded for an event's first attempt, which must have failed
/// to connect.
async fn connect_failure(app: &TestApp, event_id: &str) -> String {
    let first = outcomes(app.history_of(event_id, 1).await).remove(0);
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
    let (kind, not_tls) = outcomes(app.history_of("evt_not_tls", 1).await).remove(0);
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
    let slow = outcomes(app.history_of("evt_slow_kind", 1).await);
    assert_eq!(
        slow,
        [("timeout".to_owned(), "no answer within 300 ms".to_owned())]
    );
    app.stop().await;
}

on_both_stores!(
    the_delivering_attempt_is_in_the_history_without_a_row_of_its_own,
    each_kind_of_failure_is_named_in_the_history,
);
