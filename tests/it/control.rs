//! Delivery control over the real path: an operator's pause, the breaker
//! and the paced drain, on both stores and across two PostgreSQL replicas,
//! against a mock Accelerate that records when each request came.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::process::RelayProcess;
use common::*;
use serde_json::Value;

const TOKEN: &str = "admin-token-0123456789abcdef0123456789";
const WAIT: Duration = Duration::from_secs(20);

async fn admin(client: &reqwest::Client, base: &str, method: &str, path: &str) -> (u16, Value) {
    let url = format!("{base}{path}");
    let request = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    };
    let request = request.header("authorization", format!("Bearer {TOKEN}"));
    answer(request.send().await.expect("the admin API answers")).await
}

/// `GET /admin/environments`' entry for `env`.
async fn environment(client: &reqwest::Client, base: &str, env: &str) -> Value {
    let (status, body) = admin(client, base, "GET", "/admin/environments").await;
    assert_eq!(status, 200, "{body}");
    body["environments"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|e| e["environment"] == env)
        .cloned()
        .expect("every environment is listed")
}

/// How many times Accelerate got each event.
fn sends(mock: &MockAccelerate) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for id in mock.event_ids() {
        *seen.entry(id).or_default() += 1;
    }
    seen
}

/// The most requests that arrived within any one second.
fn busiest_second(received: &[mock::Received]) -> usize {
    let times: Vec<Instant> = received.iter().map(|r| r.at).collect();
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| t.duration_since(times[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// While paused, events are accepted and stored, and no attempt is made or
/// spent, across a restart too; the other environment flows meanwhile. On
/// resume the held events go out oldest first, each on its first attempt.
async fn a_pause_holds_across_a_restart(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", TOKEN)]).await;
    let client = reqwest::Client::new();
    let base = app.address.clone();
    let (status, paused) = admin(&client, &base, "POST", "/admin/environments/sandbox/pause").await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["changed"], true);
    assert_eq!(paused["environment"]["paused"], true);
    assert_eq!(paused["environment"]["paused_by"], "api");
    let (_, again) = admin(&client, &base, "POST", "/admin/environments/sandbox/pause").await;
    assert_eq!(again["changed"], false, "pausing twice changes nothing");
    let (status, unknown) = admin(&client, &base, "POST", "/admin/environments/prod/pause").await;
    assert_eq!(status, 400, "{unknown}");
    assert!(
        unknown["message"]
            .as_str()
            .unwrap_or("")
            .contains("sandbox"),
        "{unknown}"
    );

    for i in 0..5 {
        let (status, body) = app
            .send_json("sandbox", approved_event(&format!("evt_held_{i}")))
            .await;
        assert_eq!((status, body["status"].as_str()), (200, Some("accepted")));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.send_json("production", approved_event("evt_flows"))
        .await;
    app.production.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(app.sandbox.received().is_empty(), "an attempt while paused");

    let app = app.restart().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        app.sandbox.received().is_empty(),
        "the pause did not survive the restart"
    );
    let shown = environment(&client, &app.address, "sandbox").await;
    assert_eq!(shown["paused"], true, "{shown}");
    assert_eq!(shown["pending"], 5, "{shown}");
    assert!(shown["oldest_pending_age_seconds"].is_u64(), "{shown}");
    assert_eq!(shown["breaker"], "closed", "{shown}");
    assert_eq!(shown["rate_per_second"], 100, "{shown}");

    let (status, resumed) = admin(
        &client,
        &app.address,
        "POST",
        "/admin/environments/sandbox/resume",
    )
    .await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["environment"]["paused"], false);
    let got = app.sandbox.wait_for(5, WAIT).await;
    let oldest_first: Vec<String> = (0..5).map(|i| format!("evt_held_{i}")).collect();
    let mut arrived: Vec<String> = got.iter().map(mock::Received::event_id).collect();
    arrived.sort();
    assert_eq!(arrived, oldest_first, "each held event once");
    // The order the relay sent them in, from its own record of each attempt's
    // start: the pace puts 10 ms between them. (Arrivals at the mock can swap
    // when two connections race; seen once in CI's full run.)
    let mut sent = Vec::new();
    for id in &oldest_first {
        let first = app.history_of(id, 1).await.remove(0);
        sent.push((first.started_at, id.clone()));
    }
    sent.sort();
    let sent: Vec<String> = sent.into_iter().map(|(_, id)| id).collect();
    assert_eq!(sent, oldest_first, "sent oldest first");
    assert!(
        got.iter()
            .all(|r| r.header_str("x-relay-attempt") == Some("1")),
        "the pause spent an attempt"
    );
    app.stop().await;
}

/// With a short retry schedule and Accelerate down far longer, nothing
/// turns dead once the breaker is open and Accelerate sees only the
/// probes, one per interval; after recovery each event arrives once.
async fn the_breaker_spends_no_attempts(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("RELAY_ADMIN_TOKEN", TOKEN),
            ("RELAY_RETRY_SCHEDULE", "50ms,50ms"),
            ("RELAY_BREAKER_FAILURES", "3"),
            ("RELAY_BREAKER_PROBE_INTERVAL", "500ms"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    app.sandbox.set_default(Reply::Status(503));
    const EVENTS: usize = 12;
    for i in 0..EVENTS {
        app.send_json("sandbox", approved_event(&format!("evt_down_{i:02}")))
            .await;
    }
    let opened = eventually(WAIT, || async {
        environment(&client, &app.address, "sandbox").await["breaker"] == "open"
    })
    .await;
    assert!(opened, "the breaker never opened");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("accelerate_relay_breaker_open{environment=\"sandbox\"} 1"),
        "{metrics}"
    );
    // Attempts already in flight when it opened end; then only probes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = app.sandbox.received().len();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let during = app.sandbox.received()[before..].to_vec();
    assert!(
        (4..=8).contains(&during.len()),
        "expected about one probe each 500 ms over 3 s, got {}",
        during.len()
    );
    for pair in during.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(gap >= Duration::from_millis(400), "probes {gap:?} apart");
    }
    let dead = app.db.count_rows("deliveries WHERE status = 'dead'").await;
    assert_eq!(dead, 0, "a delivery turned dead while the breaker was open");
    let shown = environment(&client, &app.address, "sandbox").await;
    assert_eq!(shown["pending"], EVENTS, "{shown}");

    app.sandbox.set_default(Reply::Status(200));
    let all_delivered = eventually(WAIT, || async {
        app.db
            .count_rows("deliveries WHERE status = 'delivered'")
            .await
            == EVENTS as i64
    })
    .await;
    assert!(all_delivered, "the backlog did not drain after recovery");
    let delivered: Vec<String> = app
        .sandbox
        .received()
        .iter()
        .filter(|r| r.at > during.last().map_or(r.at, |l| l.at))
        .map(mock::Received::event_id)
        .collect();
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "an event sent twice after recovery"
    );
    assert_eq!(
        environment(&client, &app.address, "sandbox").await["breaker"],
        "closed"
    );
    app.stop().await;
}

/// A 429 with `Retry-After` holds the whole environment, not only the
/// event it answered.
async fn retry_after_slows_the_whole_environment(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.sandbox.script([Reply::RetryAfter(429, "2".to_owned())]);
    app.send_json("sandbox", approved_event("evt_first")).await;
    let first = app.sandbox.wait_for(1, WAIT).await[0].at;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..3 {
        app.send_json("sandbox", approved_event(&format!("evt_next_{i}")))
            .await;
    }
    let got = app.sandbox.wait_for(5, WAIT).await;
    for later in &got[1..] {
        assert!(
            later.at.duration_since(first) >= Duration::from_millis(1900),
            "{} went out {:?} after Accelerate asked for 2 s",
            later.event_id(),
            later.at.duration_since(first)
        );
    }
    assert!(app.reaches_status("evt_first", "delivered", WAIT).await);
    app.stop().await;
}

on_both_stores!(
    a_pause_holds_across_a_restart,
    the_breaker_spends_no_attempts,
    retry_after_slows_the_whole_environment,
);

/// Two PostgreSQL replicas drain one backlog together at the fleet's rate:
/// no one-second window above it by more than 10%, every event once.
#[tokio::test]
async fn two_replicas_keep_to_one_rate() {
    const RATE: usize = 20;
    const EVENTS: usize = 160;
    let db = TestDb::create(Backend::Postgres).await;
    let accelerate = MockAccelerate::start().await;
    let settings = [
        ("RELAY_DATABASE_URL", db.url()),
        ("RELAY_ADMIN_TOKEN", TOKEN),
        ("RELAY_DELIVERY_RATE", "20"),
    ];
    let dir_a = tempfile::tempdir().expect("dir");
    let dir_b = tempfile::tempdir().expect("dir");
    let a = RelayProcess::start(dir_a.path(), &accelerate.url(), &settings).await;
    let b = RelayProcess::start(dir_b.path(), &accelerate.url(), &settings).await;
    let client = reqwest::Client::new();
    let (status, _) = admin(
        &client,
        &a.address,
        "POST",
        "/admin/environments/sandbox/pause",
    )
    .await;
    assert_eq!(status, 200);
    // Every replica obeys within a second.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(40) {
        let sent = chunk.iter().map(|i| {
            let to = if i % 2 == 0 { &a.address } else { &b.address };
            post_signed(
                &client,
                to,
                "sandbox",
                approved_event(&format!("evt_rate_{i:03}")),
            )
        });
        for response in futures_util::future::join_all(sent).await {
            assert_eq!(response.expect("answer").status(), 200);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(accelerate.received().is_empty(), "sent while paused");
    // Resumed on the other replica.
    let (status, _) = admin(
        &client,
        &b.address,
        "POST",
        "/admin/environments/sandbox/resume",
    )
    .await;
    assert_eq!(status, 200);
    let all = accelerate
        .wait_for(
            EVENTS,
            Duration::from_secs(EVENTS as u64 / RATE as u64 + 10),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = sends(&accelerate);
    assert_eq!(seen.len(), EVENTS);
    assert!(seen.values().all(|n| *n == 1), "an event sent twice");
    let busiest = busiest_second(&all);
    println!("two replicas at {RATE}/s: busiest second {busiest} requests");
    assert!(
        busiest <= RATE + RATE / 10,
        "{busiest} requests in one second at a rate of {RATE}"
    );
    let span = all[all.len() - 1].at.duration_since(all[0].at);
    assert!(
        span >= Duration::from_secs_f64((EVENTS - RATE) as f64 / RATE as f64),
        "drained in {span:?}: faster than the rate"
    );
}

/// The breaker's probe is the fleet's: the replica holding it dies during
/// the probe, and the other takes the next one an interval later, so the
/// backlog drains as soon as Accelerate is back.
#[tokio::test]
async fn a_replica_dying_with_the_probe_does_not_stall_the_breaker() {
    let db = TestDb::create(Backend::Postgres).await;
    let accelerate = MockAccelerate::start().await;
    accelerate.set_default(Reply::Status(503));
    let settings = [
        ("RELAY_DATABASE_URL", db.url()),
        ("RELAY_ADMIN_TOKEN", TOKEN),
        ("RELAY_BREAKER_FAILURES", "2"),
        ("RELAY_BREAKER_PROBE_INTERVAL", "500ms"),
        ("RELAY_DELIVERY_TIMEOUT_MS", "3000"),
        ("RELAY_LEASE_MS", "8000"),
    ];
    let dir_a = tempfile::tempdir().expect("dir");
    let dir_b = tempfile::tempdir().expect("dir");
    let mut replicas = [
        RelayProcess::start(dir_a.path(), &accelerate.url(), &settings).await,
        RelayProcess::start(dir_b.path(), &accelerate.url(), &settings).await,
    ];
    let client = reqwest::Client::new();
    const EVENTS: usize = 6;
    for i in 0..EVENTS {
        let to = &replicas[i % 2].address;
        let response = post_signed(&client, to, "sandbox", approved_event(&format!("evt_p{i}")))
            .await
            .expect("answer");
        assert_eq!(response.status(), 200);
    }
    let opened = eventually(WAIT, || async {
        environment(&client, &replicas[0].address, "sandbox").await["breaker"] == "open"
    })
    .await;
    assert!(opened, "the breaker never opened");
    // The next probe hangs; Accelerate is back for everything after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = accelerate.received().len();
    accelerate.script([Reply::Slow(Duration::from_secs(30), 200)]);
    accelerate.set_default(Reply::Status(200));
    accelerate.wait_for(before + 1, WAIT).await;
    let mut holder = None;
    for (i, replica) in replicas.iter().enumerate() {
        if environment(&client, &replica.address, "sandbox").await["in_flight"] == 1 {
            holder = Some(i);
        }
    }
    let holder = holder.expect("one replica shows the probe in flight");
    replicas[holder].kill_9();
    let killed = Instant::now();
    let other = &replicas[1 - holder];
    let closed = eventually(WAIT, || async {
        environment(&client, &other.address, "sandbox").await["breaker"] == "closed"
    })
    .await;
    assert!(
        closed,
        "the breaker stayed open without its probe's replica"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "the next probe waited for the dead replica: {:?}",
        killed.elapsed()
    );
    // The hung probe's delivery comes back when its lease ends.
    let all_delivered = eventually(WAIT, || async {
        db.count_rows("deliveries WHERE status = 'delivered'").await == EVENTS as i64
    })
    .await;
    assert!(all_delivered, "not every event was delivered");
}

/// The CLI pauses and resumes straight on the store; the running relay
/// obeys within a second and `environments list` says who paused.
#[tokio::test]
async fn the_cli_pauses_and_resumes_a_running_relay() {
    let dir = tempfile::tempdir().expect("dir");
    let accelerate = MockAccelerate::start().await;
    let relay = RelayProcess::start(dir.path(), &accelerate.url(), &[]).await;
    let cli = |args: &[&str]| common::process::operator_command(dir.path(), args);
    let (ok, out, err) = cli(&["environments", "pause", "sandbox"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("sandbox: paused"), "{out}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let client = reqwest::Client::new();
    let response = post_signed(
        &client,
        &relay.address,
        "sandbox",
        approved_event("evt_cli"),
    )
    .await
    .expect("answer");
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(accelerate.received().is_empty(), "sent while paused");
    let (ok, out, _) = cli(&["environments", "list"]);
    assert!(ok);
    let sandbox = out
        .lines()
        .find(|l| l.starts_with("sandbox"))
        .expect("a line");
    assert!(sandbox.contains("by cli"), "{out}");
    assert!(sandbox.contains("1 pending"), "{out}");
    let (ok, out, err) = cli(&["environments", "list", "--json"]);
    assert!(ok, "{err}");
    let first: Value = serde_json::from_str(out.lines().next().expect("a line")).expect("json");
    assert!(first["paused"].is_boolean(), "{first}");
    let (ok, _, err) = cli(&["environments", "pause", "prod"]);
    assert!(!ok);
    assert!(err.contains("sandbox"), "{err}");
    let (ok, out, _) = cli(&["environments", "resume", "sandbox"]);
    assert!(ok);
    assert!(out.contains("resumed"), "{out}");
    accelerate.wait_for(1, Duration::from_secs(3)).await;
}
