//! Several relay replicas on one PostgreSQL database. (The receive and deliver
//! suites also run on PostgreSQL: see `on_both_stores!` in those files.)

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use accelerate_relay::config::Config;
use accelerate_relay::Application;
use actix_web::dev::ServerHandle;
use common::operator;
use common::process::RelayProcess;
use common::proxy::Proxy;
use common::*;
use futures_util::StreamExt;

const WAIT: Duration = Duration::from_secs(30);

struct Replica {
    address: String,
    handle: ServerHandle,
    join: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Replica {
    async fn stop(self) {
        self.handle.stop(true).await;
        self.join.await.expect("join").expect("clean stop");
    }
}

async fn replicas(n: usize, vars: Vec<(String, String)>) -> Vec<Replica> {
    // Built concurrently: migrations must be safe when replicas start together.
    let builds = (0..n).map(|_| {
        let config = Config::from_vars(vars.clone()).expect("config");
        Application::build(config)
    });
    futures_util::future::join_all(builds)
        .await
        .into_iter()
        .map(|app| {
            let app = app.expect("replica starts");
            let address = format!("http://127.0.0.1:{}", app.port());
            let handle = app.handle();
            Replica {
                address,
                handle,
                join: tokio::spawn(app.run_until_stopped()),
            }
        })
        .collect()
}

async fn send(client: &reqwest::Client, address: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let response = post_signed(client, address, "sandbox", body)
        .await
        .expect("the replica answers");
    answer(response).await
}

fn delivered_ids(mock: &MockAccelerate) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for id in mock.event_ids() {
        *seen.entry(id).or_default() += 1;
    }
    seen
}

async fn thousand_events_exactly_once(n: usize) {
    let db = TestDb::create(Backend::Postgres).await;
    let sandbox = MockAccelerate::start().await;
    let production = MockAccelerate::start().await;
    let replicas = replicas(n, base_vars(&sandbox, &production, db.url())).await;
    let client = reqwest::Client::new();
    let addresses: Vec<String> = replicas.iter().map(|r| r.address.clone()).collect();

    let answers: Vec<(u16, serde_json::Value)> = futures_util::stream::iter(0..1000)
        .map(|i| {
            let (client, address) = (&client, &addresses[i % n]);
            async move { send(client, address, approved_event(&format!("evt_r{i:04}"))).await }
        })
        .buffer_unordered(48)
        .collect()
        .await;
    assert!(answers
        .iter()
        .all(|(s, b)| *s == 200 && b["status"] == "accepted"));

    // Checkout.com resends some to another replica: each is a duplicate there.
    for i in (0..1000).step_by(50) {
        let other = &addresses[(i + 1) % n];
        let (status, body) = send(&client, other, approved_event(&format!("evt_r{i:04}"))).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("duplicate")));
    }

    sandbox.wait_for(1000, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = delivered_ids(&sandbox);
    assert_eq!(seen.len(), 1000);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(db.count().await, 1000);
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_1000_events_each_exactly_once() {
    thousand_events_exactly_once(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_deliver_1000_events_each_exactly_once() {
    thousand_events_exactly_once(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_event_sent_to_two_replicas_at_once_is_accepted_once() {
    let db = TestDb::create(Backend::Postgres).await;
    let sandbox = MockAccelerate::start().await;
    let production = MockAccelerate::start().await;
    let replicas = replicas(2, base_vars(&sandbox, &production, db.url())).await;
    let client = reqwest::Client::new();
    for i in 0..20 {
        let body = approved_event(&format!("evt_race{i}"));
        let (a, b) = tokio::join!(
            send(&client, &replicas[0].address, body.clone()),
            send(&client, &replicas[1].address, body)
        );
        let mut outcomes = [
            a.1["status"].as_str().map(str::to_owned),
            b.1["status"].as_str().map(str::to_owned),
        ];
        outcomes.sort();
        assert_eq!(
            outcomes,
            [Some("accepted".to_owned()), Some("duplicate".to_owned())]
        );
    }
    sandbox.wait_for(20, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sandbox.received().len(), 20);
    for replica in replicas {
        replica.stop().await;
    }
}

/// A retry sent to another replica while the first one's attempt is in
/// flight is refused too: the fence is the store's, not a replica's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_replica_never_sends_beside_an_attempt_in_flight() {
    const TOKEN: &str = "admin-token-0123456789abcdef0123456789";
    let db = TestDb::create(Backend::Postgres).await;
    let sandbox = MockAccelerate::start().await;
    let production = MockAccelerate::start().await;
    sandbox.set_default(Reply::Slow(Duration::from_millis(1500), 200));
    let vars = with_overrides(
        base_vars(&sandbox, &production, db.url()),
        &[("RELAY_ADMIN_TOKEN", TOKEN)],
    );
    let replicas = replicas(2, vars).await;
    let client = reqwest::Client::new();
    let (_, accepted) = send(&client, &replicas[0].address, approved_event("evt_other")).await;
    let id = accepted["delivery_id"].as_str().expect("id").to_owned();
    sandbox.wait_for(1, WAIT).await;
    for replica in &replicas {
        let response = client
            .post(format!("{}/admin/deliveries/{id}/retry", replica.address))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("admin answer");
        assert_eq!(response.status(), 409, "{}", replica.address);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sandbox.received().len(), 1, "one send");
    for replica in replicas {
        replica.stop().await;
    }
}

/// A console session lives in the database: signed in on one replica it
/// opens the other, and signed out (or revoked) on one it is refused by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_on_one_replica_ends_the_session_on_every_replica() {
    const TOKEN: &str = "admin-token-0123456789abcdef0123456789";
    let db = TestDb::create(Backend::Postgres).await;
    let sandbox = MockAccelerate::start().await;
    let production = MockAccelerate::start().await;
    let vars = with_overrides(
        base_vars(&sandbox, &production, db.url()),
        &[("RELAY_ADMIN_TOKEN", TOKEN)],
    );
    let replicas = replicas(2, vars).await;
    let (a, b) = (&replicas[0].address, &replicas[1].address);

    let session = operator::sign_in(a, TOKEN).await.expect("signed in on a");
    assert!(session.opens(a).await && session.opens(b).await);
    let csrf = session.csrf(b).await;
    let (status, _) = session
        .post(b, "/console/sign-out", &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 303);
    assert!(!session.opens(a).await, "signed out on b, refused by a");
    assert!(!session.opens(b).await);

    let other = operator::sign_in(b, TOKEN).await.expect("signed in on b");
    let revoked = reqwest::Client::new()
        .post(format!("{a}/admin/sessions/{}/revoke", other.id()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answer");
    assert_eq!(revoked.status(), 200);
    assert!(!other.opens(b).await, "revoked on a, refused by b");
    for replica in replicas {
        replica.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_mid_delivery_is_covered_by_another_after_the_lease() {
    let db = TestDb::create(Backend::Postgres).await;
    let accelerate = MockAccelerate::start().await;
    accelerate.script([Reply::Slow(Duration::from_secs(60), 200)]);
    let settings = [
        ("RELAY_DATABASE_URL", db.url()),
        ("RELAY_DELIVERY_TIMEOUT_MS", "1500"),
        ("RELAY_LEASE_MS", "3500"),
    ];
    let dir_a = tempfile::tempdir().expect("dir");
    let dir_b = tempfile::tempdir().expect("dir");
    let mut a = RelayProcess::start(dir_a.path(), &accelerate.url(), &settings).await;
    let _b = RelayProcess::start(dir_b.path(), &accelerate.url(), &settings).await;

    let client = reqwest::Client::new();
    let body = fixture("payment_approved.json");
    let (status, _) = send(&client, &a.address, body.clone()).await;
    assert_eq!(status, 200);
    accelerate.wait_for(1, WAIT).await;
    let killed_at = std::time::Instant::now();
    a.kill_9();

    // B must not take over while A's lease could still be in force.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        accelerate.received().len(),
        1,
        "a live lease was taken over"
    );
    let got = accelerate.wait_for(2, WAIT).await;
    assert!(got[1].at.duration_since(killed_at) < Duration::from_secs(10));
    assert_eq!(got[1].body.as_ref(), body.as_slice());
    assert_eq!(got[1].header_str("x-relay-attempt"), Some("2"));
    assert!(
        eventually(WAIT, || async {
            db.status("evt_az5sblvku4ge3dwpztvyizgcau").await.as_deref() == Some("delivered")
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_database_answers_503_and_recovers_by_itself() {
    let db = TestDb::create(Backend::Postgres).await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let mut url = reqwest::Url::parse(db.url()).expect("url");
    url.set_port(Some(proxy.port)).expect("port");
    let sandbox = MockAccelerate::start().await;
    let production = MockAccelerate::start().await;
    let vars = with_overrides(
        base_vars(&sandbox, &production, url.as_str()),
        &[("RELAY_DATABASE_STATEMENT_TIMEOUT_MS", "1000")],
    );
    let replica = replicas(1, vars).await.remove(0);
    let client = reqwest::Client::new();

    let (status, _) = send(&client, &replica.address, approved_event("evt_before")).await;
    assert_eq!(status, 200);
    sandbox.wait_for(1, WAIT).await;

    proxy.cut();
    let started = std::time::Instant::now();
    let response = client
        .post(format!(
            "{}/webhooks/checkoutdotcom/sandbox",
            replica.address
        ))
        .header("authorization", SANDBOX_AUTH)
        .header(
            "cko-signature",
            sign(SANDBOX_SIG, &approved_event("evt_during")),
        )
        .body(approved_event("evt_during"))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        response.status().as_u16(),
        503,
        "never 2xx without the database"
    );
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered promptly: {:?}",
        started.elapsed()
    );
    assert_eq!(readyz(&client, &replica.address).await, 503);

    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    assert!(
        eventually(WAIT, || async {
            readyz(&client, &replica.address).await == 200
        })
        .await,
        "ready again"
    );
    let (status, body) = send(&client, &replica.address, approved_event("evt_during")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("accepted")));
    let (status, _) = send(&client, &replica.address, approved_event("evt_after")).await;
    assert_eq!(status, 200);

    sandbox.wait_for(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = delivered_ids(&sandbox);
    for id in ["evt_before", "evt_during", "evt_after"] {
        assert_eq!(seen.get(id), Some(&1), "{id}: {seen:?}");
    }
    replica.stop().await;
}
