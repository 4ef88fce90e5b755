//! Replays by time range, as an operator makes them after an Accelerate
//! incident: over the admin API, the CLI and two PostgreSQL replicas, against
//! a mock Accelerate that records every request.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::process::RelayProcess;
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "admin-token-0123456789abcdef0123456789";
const WAIT: Duration = Duration::from_secs(20);

async fn admin(
    client: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{base}{path}");
    let mut request = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    };
    request = request.header("authorization", format!("Bearer {TOKEN}"));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    answer(request.send().await.expect("the admin API answers")).await
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Waits until the replay is `done` and returns it.
async fn finished(client: &reqwest::Client, base: &str, id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, replay) = admin(client, base, "GET", &format!("/admin/replays/{id}"), None).await;
        if replay["state"] == "done" {
            return replay;
        }
        assert!(
            Instant::now() < deadline,
            "the replay did not finish: {replay}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `request` matches `n` deliveries (Accelerate has answered
/// before the outcome is committed).
async fn matches(client: &reqwest::Client, base: &str, request: &Value, n: usize) {
    let mut dry = request.clone();
    dry["dry_run"] = json!(true);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, preview) = admin(client, base, "POST", "/admin/replays", Some(dry.clone())).await;
        if preview["matched"] == n {
            return;
        }
        assert!(Instant::now() < deadline, "never matched {n}: {preview}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many times Accelerate got each event.
fn sends(mock: &MockAccelerate) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for id in mock.event_ids() {
        *seen.entry(id).or_default() += 1;
    }
    seen
}

/// Every event of the range is sent again, delivered and dead ones alike,
/// with the bytes and headers of the first send, the same delivery id and a
/// new attempt number; what lies outside the range or the environment is
/// not, and every attempt stays in the history.
async fn a_replay_sends_a_time_range_again(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("RELAY_ADMIN_TOKEN", TOKEN),
            ("RELAY_RETRY_SCHEDULE", "50ms"),
        ],
    )
    .await;
    let base = app.address.clone();
    app.send_json("sandbox", approved_event("evt_before")).await;
    assert!(app.reaches_status("evt_before", "delivered", WAIT).await);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut ids = HashMap::new();
    for event in ["evt_r1", "evt_r2"] {
        let (_, accepted) = app.send_json("sandbox", approved_event(event)).await;
        ids.insert(
            event,
            accepted["delivery_id"].as_str().expect("id").to_owned(),
        );
        assert!(app.reaches_status(event, "delivered", WAIT).await);
    }
    app.sandbox.set_default(Reply::Status(503));
    app.send_json("sandbox", approved_event("evt_r3")).await;
    assert!(app.reaches_status("evt_r3", "dead", WAIT).await);
    let (_, production) = app
        .send_json("production", approved_event("evt_prod"))
        .await;
    assert_eq!(production["status"], "accepted", "{production}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.sandbox.set_default(Reply::Status(200));
    app.send_json("sandbox", approved_event("evt_after")).await;
    assert!(app.reaches_status("evt_after", "delivered", WAIT).await);
    let first_sends = app.sandbox.received();

    let request = json!({
        "environment": "sandbox",
        "received_after": after,
        "received_before": before,
        "statuses": ["delivered", "dead"],
    });
    let mut dry = request.clone();
    dry["dry_run"] = json!(true);
    let (status, preview) = admin(&app.client, &base, "POST", "/admin/replays", Some(dry)).await;
    assert_eq!((status, &preview["matched"]), (200, &json!(3)), "{preview}");
    assert_eq!(
        app.sandbox.received().len(),
        first_sends.len(),
        "a dry run sends nothing"
    );

    let (status, started) =
        admin(&app.client, &base, "POST", "/admin/replays", Some(request)).await;
    assert_eq!(status, 202, "{started}");
    let replay = &started["replay"];
    assert_eq!(replay["matched"], 3, "{started}");
    assert_eq!(replay["environment"], "sandbox");
    let id = replay["id"].as_str().expect("replay id").to_owned();
    assert!(id.starts_with("rpl_"), "{id}");
    let done = finished(&app.client, &base, &id).await;
    assert_eq!(
        (done["matched"].clone(), done["queued"].clone()),
        (json!(3), json!(3)),
        "{done}"
    );

    let all = app.sandbox.wait_for(first_sends.len() + 3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all_now = app.sandbox.received();
    assert_eq!(
        all_now.len(),
        first_sends.len() + 3,
        "exactly the three were sent again"
    );
    let replayed = &all[first_sends.len()..];
    let mut replayed_ids: Vec<String> = replayed.iter().map(|r| r.event_id()).collect();
    replayed_ids.sort();
    assert_eq!(replayed_ids, ["evt_r1", "evt_r2", "evt_r3"]);
    assert!(
        app.production.received().len() == 1,
        "production is not replayed"
    );
    for again in replayed {
        let event = again.event_id();
        let first = first_sends
            .iter()
            .rev()
            .find(|r| r.event_id() == event)
            .expect("sent before");
        assert_eq!(again.body, first.body, "{event}: the same bytes");
        for header in [
            "authorization",
            "x-relay-delivery-id",
            "cko-signature",
            "content-type",
        ] {
            assert_eq!(
                again.header(header),
                first.header(header),
                "{event}: {header}"
            );
        }
        let attempt = |r: &common::mock::Received| -> u32 {
            r.header_str("x-relay-attempt")
                .expect("attempt")
                .parse()
                .expect("number")
        };
        assert!(
            attempt(again) > attempt(first),
            "{event}: a new attempt number"
        );
    }
    for event in ["evt_r1", "evt_r3"] {
        assert!(
            app.reaches_status(event, "delivered", WAIT).await,
            "{event}"
        );
    }
    // Both deliveries of evt_r1 are in its history; the dead one's failures too.
    let (_, shown) = admin(
        &app.client,
        &base,
        "GET",
        &format!("/admin/deliveries/{}", ids["evt_r1"]),
        None,
    )
    .await;
    let history = shown["attempt_history"].as_array().expect("history");
    let outcomes: Vec<&str> = history
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(outcomes, ["delivered", "delivered"], "{shown}");
    assert_eq!(shown["status"], "delivered");

    // A finished replay cannot be cancelled; ids are spelt one way.
    let (status, refused) = admin(
        &app.client,
        &base,
        "POST",
        &format!("/admin/replays/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (409, Some("replay_ended")),
        "{refused}"
    );
    let (status, _) = admin(&app.client, &base, "GET", "/admin/replays/rpl_999999", None).await;
    assert_eq!(status, 404);
    for bad in ["rpl_07", "rpl_+7", "7", "dlv_7"] {
        let (status, body) = admin(
            &app.client,
            &base,
            "GET",
            &format!("/admin/replays/{bad}"),
            None,
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, listed) = admin(&app.client, &base, "GET", "/admin/replays", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["replays"][0]["id"], id.as_str(), "{listed}");
    app.stop().await;
}

/// A request that is not exactly right changes nothing and says why.
async fn a_replay_request_is_parsed_strictly(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", TOKEN)]).await;
    let base = app.address.clone();
    let good = json!({
        "environment": "sandbox",
        "received_after": "2026-01-01T00:00:00Z",
        "received_before": "2026-01-02T00:00:00Z",
        "statuses": ["dead"],
    });
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        body
    };
    let without = |key: &str| {
        let mut body = good.clone();
        body.as_object_mut().expect("object").remove(key);
        body
    };
    let cases = [
        (with("enviroment", json!("sandbox")), "enviroment"),
        (with("environment", json!("prod")), "environment"),
        (with("received_after", json!("yesterday")), "received_after"),
        (
            with("received_before", json!("2025-01-01T00:00:00Z")),
            "must be before",
        ),
        (with("statuses", json!([])), "statuses"),
        (with("statuses", json!(["dead", "dead"])), "more than once"),
        (with("statuses", json!(["failed"])), "statuses"),
        (without("statuses"), "statuses"),
        (without("environment"), "environment"),
    ];
    for (body, named) in cases {
        let (status, answer) = admin(
            &app.client,
            &base,
            "POST",
            "/admin/replays",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .is_some_and(|m| m.contains(named)),
            "{body}: {answer}"
        );
    }
    // A key given twice, a query parameter, and a body that is not JSON.
    let twice = r#"{"environment":"sandbox","environment":"production","received_after":"2026-01-01T00:00:00Z","received_before":"2026-01-02T00:00:00Z","statuses":["dead"]}"#;
    for (path, body) in [
        ("/admin/replays", twice.to_owned()),
        ("/admin/replays?environment=sandbox", good.to_string()),
        ("/admin/replays", "not json".to_owned()),
    ] {
        let response = app
            .client
            .post(format!("{base}{path}"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("answer");
        let (status, answer) = answer(response).await;
        assert_eq!(status, 400, "{path}: {answer}");
    }
    let (_, listed) = admin(&app.client, &base, "GET", "/admin/replays", None).await;
    assert_eq!(listed["replays"], json!([]), "nothing was recorded");
    app.stop().await;
}

/// A replay that reaches a delivery whose attempt is being sent waits for
/// that attempt to end: never two attempts of one event at Accelerate at once.
async fn a_replay_waits_for_an_attempt_in_flight(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", TOKEN)]).await;
    let base = app.address.clone();
    let after = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.sandbox
        .set_default(Reply::Slow(Duration::from_millis(1500), 200));
    let (_, accepted) = app.send_json("sandbox", approved_event("evt_slow")).await;
    let delivery = accepted["delivery_id"].as_str().expect("id").to_owned();
    app.sandbox.wait_for(1, WAIT).await;
    let (status, started) = admin(
        &app.client,
        &base,
        "POST",
        "/admin/replays",
        Some(json!({
            "environment": "sandbox",
            "received_after": after,
            "received_before": now_rfc3339(),
            "statuses": ["pending", "delivered", "dead"],
        })),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let id = started["replay"]["id"].as_str().expect("id").to_owned();
    app.sandbox.set_default(Reply::Status(200));
    finished(&app.client, &base, &id).await;
    let got = app.sandbox.wait_for(2, WAIT).await;
    assert!(
        got[1].at.duration_since(got[0].at) >= Duration::from_millis(1400),
        "the replayed attempt started while the first was in flight"
    );
    assert!(app.reaches_status("evt_slow", "delivered", WAIT).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sandbox.received().len(), 2, "one replayed send");
    let (_, shown) = admin(
        &app.client,
        &base,
        "GET",
        &format!("/admin/deliveries/{delivery}"),
        None,
    )
    .await;
    let attempts: Vec<u64> = shown["attempt_history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|a| a["attempt"].as_u64().expect("n"))
        .collect();
    assert_eq!(attempts, [1, 2], "{shown}");
    app.stop().await;
}

/// Stored, so a restart resumes it; paced, a step of 200 a second; a
/// cancelled one queues nothing more.
async fn a_replay_is_paced_resumes_after_a_restart_and_cancels(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", TOKEN)]).await;
    let after = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(20)).await;
    const EVENTS: usize = 450;
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(50) {
        let sent = chunk
            .iter()
            .map(|i| app.send_json("sandbox", approved_event(&format!("evt_many_{i}"))));
        for (status, body) in futures_util::future::join_all(sent).await {
            assert_eq!(status, 200, "{body}");
        }
    }
    app.sandbox.wait_for(EVENTS, WAIT).await;
    let before = now_rfc3339();
    let request = json!({
        "environment": "sandbox",
        "received_after": after,
        "received_before": before,
        "statuses": ["delivered"],
    });
    let base = app.address.clone();
    matches(&app.client, &base, &request, EVENTS).await;
    let (status, started) = admin(
        &app.client,
        &base,
        "POST",
        "/admin/replays",
        Some(request.clone()),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["replay"]["matched"], EVENTS);
    let id = started["replay"]["id"].as_str().expect("id").to_owned();
    // Stopped right away, started again: the replay carries on from the store.
    let app = app.restart().await;
    let base = app.address.clone();
    let done = finished(&app.client, &base, &id).await;
    assert_eq!(done["queued"], EVENTS, "{done}");
    let all = app.sandbox.wait_for(2 * EVENTS, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        sends(&app.sandbox).values().all(|n| *n == 2),
        "each event sent once again"
    );
    assert_eq!(app.sandbox.received().len(), 2 * EVENTS);
    // Three steps of at most 200, a second apart.
    let replayed = &all[EVENTS..];
    let span = replayed[replayed.len() - 1]
        .at
        .duration_since(replayed[0].at);
    assert!(
        span >= Duration::from_millis(1800),
        "450 replayed within {span:?}"
    );

    // Cancelled before its second step: no more than the first step is sent.
    let (_, started) = admin(&app.client, &base, "POST", "/admin/replays", Some(request)).await;
    let id = started["replay"]["id"].as_str().expect("id").to_owned();
    let (status, cancelled) = admin(
        &app.client,
        &base,
        "POST",
        &format!("/admin/replays/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(
        (status, &cancelled["state"]),
        (200, &json!("cancelled")),
        "{cancelled}"
    );
    let queued = cancelled["queued"].as_u64().expect("queued");
    assert!(queued <= 200, "{cancelled}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, later) = admin(
        &app.client,
        &base,
        "GET",
        &format!("/admin/replays/{id}"),
        None,
    )
    .await;
    assert_eq!(
        (later["state"].clone(), later["queued"].clone()),
        (json!("cancelled"), json!(queued))
    );
    assert_eq!(app.sandbox.received().len(), 2 * EVENTS + queued as usize);
    app.stop().await;
}

on_both_stores!(
    a_replay_sends_a_time_range_again,
    a_replay_request_is_parsed_strictly,
    a_replay_waits_for_an_attempt_in_flight,
    a_replay_is_paced_resumes_after_a_restart_and_cancels,
);

/// Two replicas share a replay: its steps are paced for the fleet (not 200
/// a second each), and when the replica it was asked on dies, the other
/// finishes it. Every event is sent again exactly once.
#[tokio::test]
async fn two_replicas_share_one_replay_and_its_pace() {
    let db = TestDb::create(Backend::Postgres).await;
    let accelerate = MockAccelerate::start().await;
    // The replay's own pace is what is measured here, not the delivery
    // rate's (tests/control.rs); and a replica killed while paced would
    // hold the deliveries it claimed ahead until their lease ends.
    let settings = [
        ("RELAY_DATABASE_URL", db.url()),
        ("RELAY_ADMIN_TOKEN", TOKEN),
        ("RELAY_DELIVERY_RATE", "unlimited"),
    ];
    let dir_a = tempfile::tempdir().expect("dir");
    let dir_b = tempfile::tempdir().expect("dir");
    let mut a = RelayProcess::start(dir_a.path(), &accelerate.url(), &settings).await;
    let b = RelayProcess::start(dir_b.path(), &accelerate.url(), &settings).await;
    let client = reqwest::Client::new();
    let after = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(20)).await;
    const EVENTS: usize = 450;
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(50) {
        let sent = chunk.iter().map(|i| {
            let to = if i % 2 == 0 { &a.address } else { &b.address };
            post_signed(
                &client,
                to,
                "sandbox",
                approved_event(&format!("evt_fleet_{i}")),
            )
        });
        for response in futures_util::future::join_all(sent).await {
            assert_eq!(response.expect("answer").status(), 200);
        }
    }
    accelerate.wait_for(EVENTS, WAIT).await;
    let request = json!({
        "environment": "sandbox",
        "received_after": after,
        "received_before": now_rfc3339(),
        "statuses": ["delivered"],
    });
    matches(&client, &a.address, &request, EVENTS).await;
    let (status, started) =
        admin(&client, &a.address, "POST", "/admin/replays", Some(request)).await;
    assert_eq!(status, 202, "{started}");
    let id = started["replay"]["id"].as_str().expect("id").to_owned();
    // Both replicas step it for a while; then the one it was asked on dies.
    let started_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    a.kill_9();
    let done = finished(&client, &b.address, &id).await;
    assert_eq!(done["queued"], EVENTS, "{done}");
    let all = accelerate.wait_for(2 * EVENTS, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = sends(&accelerate);
    assert_eq!(seen.len(), EVENTS);
    assert!(
        seen.values().all(|n| *n == 2),
        "each event sent again exactly once"
    );
    let replayed = &all[EVENTS..];
    let span = replayed[replayed.len() - 1]
        .at
        .duration_since(replayed[0].at);
    assert!(
        span >= Duration::from_millis(1800),
        "paced per replica, not for the fleet: {span:?}"
    );
    assert!(started_at.elapsed() < WAIT);
}

/// The CLI makes, shows and cancels replays through the same operations,
/// straight on the store; the running relay sends them.
#[tokio::test]
async fn the_cli_replays_through_the_same_operations() {
    let dir = tempfile::tempdir().expect("dir");
    let accelerate = MockAccelerate::start().await;
    let relay = RelayProcess::start(dir.path(), &accelerate.url(), &[]).await;
    let client = reqwest::Client::new();
    let after = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..3 {
        let response = post_signed(
            &client,
            &relay.address,
            "sandbox",
            approved_event(&format!("evt_cli_{i}")),
        )
        .await
        .expect("answer");
        assert_eq!(response.status(), 200);
    }
    accelerate.wait_for(3, WAIT).await;
    let before = now_rfc3339();
    let cli = |args: &[&str]| common::process::operator_command(dir.path(), args);
    let range = [
        "deliveries",
        "replay",
        "start",
        "--environment",
        "sandbox",
        "--received-after",
        &after,
        "--received-before",
        &before,
        "--status",
        "delivered",
    ];
    let dry_run = [&range[..], &["--dry-run"]].concat();
    let counted = eventually(WAIT, || async {
        cli(&dry_run).1.trim() == "3 deliveries would be sent again"
    })
    .await;
    assert!(counted, "{:?}", cli(&dry_run));
    let (ok, out, err) = cli(&range);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("rpl_1 ") && out.contains("matched 3"),
        "{out}"
    );
    assert!(err.contains("deliveries replay show rpl_1"), "{err}");
    accelerate.wait_for(6, WAIT).await;
    let shown = eventually(WAIT, || async {
        cli(&["deliveries", "replay", "show", "rpl_1"])
            .1
            .contains(" done ")
    })
    .await;
    assert!(
        shown,
        "{}",
        cli(&["deliveries", "replay", "show", "rpl_1"]).1
    );
    let (ok, _, err) = cli(&["deliveries", "replay", "cancel", "rpl_1"]);
    assert!(!ok && err.contains("already done"), "{err}");
    let (ok, _, err) = cli(&["deliveries", "replay", "show", "rpl_01"]);
    assert!(!ok && err.contains("not a replay id"), "{err}");
    let (ok, _, err) = cli(&[
        "deliveries",
        "replay",
        "start",
        "--environment",
        "sandbox",
        "--received-after",
        &before,
        "--received-before",
        &after,
        "--status",
        "delivered",
    ]);
    assert!(!ok && err.contains("must be before"), "{err}");
    let (ok, out, _) = cli(&["deliveries", "replay", "list"]);
    assert!(ok && out.lines().count() == 1, "{out}");
    // The audit line names the CLI, as one JSON line on standard error.
    let (_, _, err) = cli(&range);
    let audit: Value = err
        .lines()
        .find(|l| l.contains("\"audit\":true"))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no audit line: {err}"));
    assert_eq!(
        (audit["actor"].as_str(), audit["action"].as_str()),
        (Some("cli"), Some("replay")),
        "{audit}"
    );
    assert_eq!(audit["subject"], "rpl_2");
    accelerate.wait_for(9, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(accelerate.received().len(), 9);
}
