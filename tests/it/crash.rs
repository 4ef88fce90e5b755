//! The built binary, killed with `kill -9` or stopped with SIGTERM: nothing
//! answered 2xx is ever lost.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::process::{free_port, statuses, ClosedPort, RelayProcess};
use common::*;

const WAIT: Duration = Duration::from_secs(20);

async fn send_to(relay: &RelayProcess, body: Vec<u8>) -> (u16, serde_json::Value) {
    let response = post_signed(&reqwest::Client::new(), &relay.address, "sandbox", body)
        .await
        .expect("the relay answers");
    answer(response).await
}

/// Kills the relay with `kill -9` at random moments under continuous load, 20
/// times, then checks that every event answered 2xx reached Accelerate.
async fn kill_9_twenty_times_under_load(backend: Backend) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, RwLock};

    const KILLS: usize = 20;
    let db = TestDb::create(backend).await;
    let accelerate = MockAccelerate::start().await;
    // Thousands are accepted in seconds; paced at the default 100/s their
    // drain would outlast the wait below, which is about losing nothing.
    let unpaced = ("RELAY_DELIVERY_RATE", "unlimited");
    let settings: Vec<(&str, &str)> = match backend {
        Backend::Sqlite => vec![unpaced],
        // No lease reset on PostgreSQL (other replicas may hold them): keep leases short.
        Backend::Postgres => vec![
            unpaced,
            ("RELAY_DATABASE_URL", db.url()),
            ("RELAY_DELIVERY_TIMEOUT_MS", "1000"),
            ("RELAY_LEASE_MS", "2500"),
        ],
    };
    let dir = db.dir.path();
    let mut relay = RelayProcess::start(dir, &accelerate.url(), &settings).await;
    let address = Arc::new(RwLock::new(relay.address.clone()));
    let answered: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (sent, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );

    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (address, answered) = (Arc::clone(&address), Arc::clone(&answered));
            let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .expect("client");
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("evt_load{:06}", sent.fetch_add(1, Ordering::SeqCst));
                    let body = approved_event(&id);
                    let target = address.read().expect("lock").clone();
                    let response = client
                        .post(format!("{target}/webhooks/checkoutdotcom/sandbox"))
                        .header("authorization", SANDBOX_AUTH)
                        .header("cko-signature", sign(SANDBOX_SIG, &body))
                        .body(body)
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status().is_success() => {
                            answered.lock().expect("lock").insert(id);
                        }
                        _ => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            })
        })
        .collect();

    for _ in 0..KILLS {
        let wait = rand::random::<u64>() % 300 + 50;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        relay.kill_9();
        relay = RelayProcess::start(dir, &accelerate.url(), &settings).await;
        *address.write().expect("lock") = relay.address.clone();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.expect("sender");
    }

    let answered = answered.lock().expect("lock").clone();
    let all_delivered = eventually(Duration::from_secs(60), || async {
        let delivered: HashSet<String> = accelerate.event_ids().into_iter().collect();
        answered.is_subset(&delivered)
    })
    .await;
    let ids = accelerate.event_ids();
    let delivered: HashSet<&String> = ids.iter().collect();
    let lost = answered.iter().filter(|id| !delivered.contains(id)).count();
    let more_than_once = delivered.len().abs_diff(ids.len());
    println!(
        "crash run ({backend:?}): kills={KILLS} sent={} answered_2xx={} delivered={} lost={lost} \
         delivered_more_than_once={more_than_once} (deliveries beyond the first, allowed: at least once) \
         delivered_without_2xx={} (committed, then killed before the answer: allowed; Checkout.com resends and gets duplicate)",
        sent.load(Ordering::SeqCst),
        answered.len(),
        delivered.len(),
        delivered.iter().filter(|id| !answered.contains(id.as_str())).count(),
    );
    assert!(
        answered.len() > 100,
        "the load was too light to mean anything"
    );
    assert!(
        all_delivered && lost == 0,
        "{lost} events answered 2xx were lost"
    );
}

async fn kill_9_twenty_times_under_load_loses_nothing(backend: Backend) {
    kill_9_twenty_times_under_load(backend).await;
}

on_both_stores!(kill_9_twenty_times_under_load_loses_nothing);

#[tokio::test]
async fn accepted_events_survive_kill_9_while_accelerate_is_down() {
    let dir = tempfile::tempdir().expect("dir");
    let closed = ClosedPort::new();
    let down = format!("http://127.0.0.1:{}/webhooks/checkoutdotcom", closed.port());
    // Retries that cannot run out while the events are sent, however slow
    // the machine: with the harness's ten 100 ms waits, a first phase over a
    // second (seen in CI) made the earliest events dead before the kill,
    // which is right for the relay and not what this test is about.
    let patient = vec!["250ms"; 120].join(",");
    // The breaker opens while Accelerate is down; its probe comes soon after
    // the restart, so the drain is not this test's wait.
    let patient = [
        ("RELAY_RETRY_SCHEDULE", patient.as_str()),
        ("RELAY_BREAKER_PROBE_INTERVAL", "300ms"),
    ];
    let mut relay = RelayProcess::start(dir.path(), &down, &patient).await;
    let mut accepted = HashSet::new();
    for i in 0..50 {
        let id = format!("evt_k9_{i:02}");
        let (status, body) = send_to(&relay, approved_event(&id)).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("accepted")));
        accepted.insert(id);
    }
    relay.kill_9();

    let accelerate = MockAccelerate::start().await;
    let _relay = RelayProcess::start(dir.path(), &accelerate.url(), &patient).await;
    let got = accelerate.wait_for(50, WAIT).await;
    let delivered: HashSet<String> = got.iter().map(mock::Received::event_id).collect();
    assert_eq!(
        delivered, accepted,
        "every accepted event reaches Accelerate after the crash"
    );
}

#[tokio::test]
async fn attempt_cut_short_by_kill_9_is_made_again_after_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let accelerate = MockAccelerate::start().await;
    // The first attempt never gets its answer in time: the relay dies during it.
    accelerate.script([Reply::Slow(Duration::from_secs(60), 200)]);
    let mut relay = RelayProcess::start(dir.path(), &accelerate.url(), &[]).await;
    let body = fixture("payment_approved.json");
    let (status, _) = send_to(&relay, body.clone()).await;
    assert_eq!(status, 200);
    accelerate.wait_for(1, WAIT).await;
    relay.kill_9();
    assert_eq!(statuses(dir.path()).await[0].1, "pending");

    let _relay = RelayProcess::start(dir.path(), &accelerate.url(), &[]).await;
    let got = accelerate.wait_for(2, WAIT).await;
    assert_eq!(got[1].body.as_ref(), body.as_slice());
    assert_eq!(got[1].header_str("x-relay-attempt"), Some("2"));
    assert!(
        eventually(WAIT, || async {
            statuses(dir.path()).await[0].1 == "delivered"
        })
        .await,
        "delivered after restart"
    );
}

#[tokio::test]
async fn sigterm_finishes_the_attempt_in_flight_and_exits_0() {
    let dir = tempfile::tempdir().expect("dir");
    let accelerate = MockAccelerate::start().await;
    accelerate.script([Reply::Slow(Duration::from_millis(1500), 200)]);
    let mut relay = RelayProcess::start(dir.path(), &accelerate.url(), &[]).await;
    let (status, _) = send_to(&relay, approved_event("evt_term")).await;
    assert_eq!(status, 200);
    accelerate.wait_for(1, WAIT).await;
    relay.sigterm();

    let exit = relay
        .exit_status(Duration::from_secs(15))
        .await
        .expect("exits after SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    assert_eq!(
        statuses(dir.path()).await,
        [("evt_term".to_owned(), "delivered".to_owned())]
    );
    assert_eq!(
        accelerate.received().len(),
        1,
        "the attempt finished; nothing to redo"
    );
    let refused = reqwest::Client::new()
        .get(format!("{}/healthz", relay.address))
        .send()
        .await;
    assert!(refused.is_err(), "no longer serving");
}

#[tokio::test]
async fn a_second_relay_on_the_same_sqlite_file_refuses_to_start() {
    let dir = tempfile::tempdir().expect("dir");
    let accelerate = MockAccelerate::start().await;
    let _first = RelayProcess::start(dir.path(), &accelerate.url(), &[]).await;
    let output = std::process::Command::new(common::process::BINARY)
        .env_clear()
        .env("RELAY_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env(
            "RELAY_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("relay.db").display()),
        )
        .env("CKO_SANDBOX_AUTHORIZATION_KEY", SANDBOX_AUTH)
        .env("CKO_SANDBOX_SIGNATURE_KEY", SANDBOX_SIG)
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another relay process"), "{stderr}");
}
