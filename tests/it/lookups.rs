//! Finding a payment: every filter of the listing is a range of an index
//! (the query plans, on both stores), the payment id is stored and found,
//! values the store cannot hold are 400 before the database sees them, and
//! operators' reads never make the relay look down.

use crate::common;

use std::time::{Duration, Instant};

use accelerate_relay::store::ListFilter;
use common::*;

const TOKEN: &str = "lookups-admin-token-0123456789abcdef0123";
const WAIT: Duration = Duration::from_secs(10);

fn filter(pairs: &[(&str, &str)]) -> ListFilter {
    ListFilter::parse(pairs.iter().copied()).expect("a valid filter")
}

/// Each filter, and the index its plan must use (one of them, where two
/// serve it: a status and a time range are both ranges of an index).
fn cases(backend: Backend) -> Vec<(Vec<(&'static str, &'static str)>, &'static str)> {
    let sqlite = backend == Backend::Sqlite;
    let event_index = if sqlite {
        "sqlite_autoindex_deliveries_1"
    } else {
        "deliveries_event_id_environment_key"
    };
    let delivered = if sqlite {
        "deliveries_delivered"
    } else {
        "deliveries_delivered_received"
    };
    let after = ("received_after", "2026-11-01T00:00:00Z");
    let before = ("received_before", "2026-11-02T00:00:00Z");
    vec![
        (vec![], "deliveries_received"),
        (vec![("environment", "production")], "deliveries_received"),
        (vec![after, before], "deliveries_received"),
        (vec![("status", "pending")], "deliveries_pending_received"),
        (vec![("status", "delivered")], delivered),
        (vec![("status", "dead")], "deliveries_dead_received"),
        (
            vec![("status", "dead"), after, before],
            "deliveries_dead_received",
        ),
        (
            vec![("status", "delivered"), ("environment", "sandbox"), after],
            if sqlite {
                "deliveries_received|deliveries_delivered"
            } else {
                delivered
            },
        ),
        (
            vec![("status", "pending"), ("cursor", "dlv_9")],
            "deliveries_pending_received",
        ),
        (vec![("cursor", "dlv_9")], "deliveries_received"),
        (
            vec![("accelerate_token", "tok_acc_x_0123456789")],
            "deliveries_token",
        ),
        (
            vec![
                ("accelerate_token", "tok_acc_x_0123456789"),
                ("status", "dead"),
                after,
            ],
            "deliveries_token",
        ),
        (vec![("event_id", "evt_x")], event_index),
        (
            vec![("event_id", "evt_x"), ("environment", "sandbox")],
            event_index,
        ),
        (vec![("payment_id", "pay_x")], "deliveries_payment"),
        (
            vec![("payment_id", "pay_x"), ("status", "delivered")],
            "deliveries_payment",
        ),
    ]
}

async fn every_filter_is_a_search_through_an_index(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Enough rows (and, on PostgreSQL, statistics) for the plans to be the
    // ones a real store gets.
    app.db.fill_delivered(20_000).await;
    app.db
        .execute("UPDATE deliveries SET status = 'pending' WHERE id % 20 = 1")
        .await;
    app.db
        .execute("UPDATE deliveries SET status = 'dead' WHERE id % 20 = 2")
        .await;
    if backend == Backend::Postgres {
        app.db.execute("ANALYZE deliveries").await;
    }
    for (pairs, index) in cases(backend) {
        let plan = app
            .store
            .list_plan(&filter(&pairs), true)
            .await
            .expect("a plan")
            .join("\n");
        assert!(
            index.split('|').any(|i| plan.contains(i)),
            "{pairs:?} should use {index}:\n{plan}"
        );
        match backend {
            Backend::Sqlite => {
                // A scan of the table itself, or a sort of everything found.
                let scans = plan
                    .lines()
                    .any(|l| l.starts_with("SCAN deliveries") && !l.contains("INDEX"));
                assert!(!scans, "{pairs:?} scans the table:\n{plan}");
                let equality = pairs
                    .iter()
                    .any(|(k, _)| ["accelerate_token", "event_id", "payment_id"].contains(k));
                if !equality {
                    assert!(
                        !plan.contains("USE TEMP B-TREE FOR ORDER BY"),
                        "{pairs:?} sorts what it found:\n{plan}"
                    );
                }
            }
            Backend::Postgres => {
                assert!(!plan.contains("Seq Scan"), "{pairs:?}:\n{plan}");
            }
        }
    }
    app.stop().await;
}

/// The payment id is kept from `data.id` at accept time and found by it in
/// the admin API (and shown), newest first with the other filters.
async fn a_payment_is_found_by_its_payment_id(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", TOKEN)]).await;
    for id in ["evt_pay_1", "evt_pay_2", "evt_pay_3"] {
        let (status, _) = app.send_json("sandbox", approved_event(id)).await;
        assert_eq!(status, 200);
    }
    assert!(app.reaches_status("evt_pay_3", "delivered", WAIT).await);
    let client = reqwest::Client::new();
    let list = |query: &'static str| {
        let (client, base) = (client.clone(), app.address.clone());
        async move {
            answer(
                client
                    .get(format!("{base}/admin/deliveries?{query}"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .expect("answer"),
            )
            .await
        }
    };
    let (status, body) = list("payment_id=pay_evt_pay_2").await;
    assert_eq!(status, 200, "{body}");
    let found = body["deliveries"].as_array().expect("a list");
    assert_eq!(found.len(), 1, "{body}");
    assert_eq!(found[0]["event_id"], "evt_pay_2");
    assert_eq!(found[0]["payment_id"], "pay_evt_pay_2");
    let (_, body) = list("payment_id=pay_evt_pay_2&status=pending").await;
    assert_eq!(body["deliveries"].as_array().expect("a list").len(), 0);
    let (_, body) = list("payment_id=pay_nothing").await;
    assert_eq!(body["deliveries"].as_array().expect("a list").len(), 0);
    // Newest first, and the cursor pages on in the same order.
    let (_, body) = list("limit=2").await;
    let ids: Vec<&str> = body["deliveries"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|d| d["event_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["evt_pay_3", "evt_pay_2"], "{body}");
    let next = body["next"].as_str().expect("a next page").to_owned();
    let (_, body) = answer(
        client
            .get(format!(
                "{}/admin/deliveries?limit=2&cursor={next}",
                app.address
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(body["deliveries"][0]["event_id"], "evt_pay_1", "{body}");
    assert_eq!(body["deliveries"].as_array().expect("a list").len(), 1);
    app.stop().await;
}

/// A NUL (or any control character) or invalid UTF-8 in a filter is a 400
/// naming the parameter, on the API and the console, on both stores.
async fn a_value_no_store_can_hold_is_a_bad_request(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", TOKEN)]).await;
    let client = reqwest::Client::new();
    for (query, name) in [
        ("event_id=evt%00", "event_id"),
        ("accelerate_token=tok%00", "accelerate_token"),
        ("payment_id=pay%01", "payment_id"),
        ("event_id=evt%FF", "event_id"),
        ("payment_id=%C3%28", "payment_id"),
    ] {
        let (status, body) = answer(
            client
                .get(format!("{}/admin/deliveries?{query}", app.address))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("answer"),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], "bad_request");
        let message = body["message"].as_str().expect("a message");
        assert!(
            message.starts_with(&format!("{name}: ")),
            "{query}: {message}"
        );
    }
    let session = operator::sign_in(&app.address, TOKEN)
        .await
        .expect("signed in");
    for (query, name) in [
        ("event_id=evt%00", "event_id"),
        ("payment_id=%FF", "payment_id"),
    ] {
        let (status, _, page) = session
            .get(&app.address, &format!("/console/deliveries?{query}"))
            .await;
        assert_eq!(status, 400, "{query}");
        assert!(page.contains(&format!("{name}: ")), "{query}: {page}");
        assert!(!page.contains("Store unavailable"), "{page}");
    }
    assert_eq!(readyz(&client, &app.address).await, 200);
    app.stop().await;
}

/// Operators' reads queue on their own connections: with many running at
/// once, `/readyz` answers at once and the metrics never say the store is
/// down, and webhooks are accepted.
async fn operator_reads_never_make_the_store_look_down(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("RELAY_ADMIN_TOKEN", TOKEN)]).await;
    app.db.fill_delivered(100_000).await;
    let client = reqwest::Client::new();
    let session = std::sync::Arc::new(
        operator::sign_in(&app.address, TOKEN)
            .await
            .expect("signed in"),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..32)
        .map(|i| {
            let (client, base, stop) = (client.clone(), app.address.clone(), stop.clone());
            let session = session.clone();
            tokio::spawn(async move {
                let mut done = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if i % 4 != 0 {
                        // The console's overview counts every kept delivery.
                        let (status, _, _) = session.get(&base, "/console").await;
                        assert_eq!(status, 200);
                        done += 1;
                        continue;
                    }
                    // The widest pages there are, each a new range.
                    let query = match i % 3 {
                        0 => "limit=500&status=delivered".to_owned(),
                        1 => "limit=500&environment=production".to_owned(),
                        _ => format!("limit=500&received_after=2026-0{}-01T00:00:00Z", 1 + i % 9),
                    };
                    let answer = client
                        .get(format!("{base}/admin/deliveries?{query}"))
                        .bearer_auth(TOKEN)
                        .send()
                        .await
                        .expect("answer");
                    assert_eq!(answer.status(), 200);
                    answer.bytes().await.expect("body");
                    done += 1;
                }
                done
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut probes = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        assert_eq!(readyz(&client, &app.address).await, 200, "probe {i}");
        probes.push(started.elapsed());
        let metrics = get_text(&client, &format!("{}/metrics", app.address)).await;
        assert!(metrics.contains("accelerate_relay_store_up 1"), "probe {i}");
        let (status, _) = app
            .send_json("sandbox", approved_event(&format!("evt_busy_{i}")))
            .await;
        assert_eq!(status, 200, "webhook {i} while operators read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.expect("reader");
    }
    // The pages were read and serialised on the operators' own threads, at
    // a lower CPU priority than the webhook workers.
    let threads = operator_threads();
    assert!(!threads.is_empty(), "no operators' threads in this process");
    assert!(
        threads.iter().all(|&(nice, _)| nice == 10),
        "operators' threads' niceness: {threads:?}"
    );
    assert!(
        threads.iter().map(|&(_, ticks)| ticks).sum::<u64>() > 0,
        "the operators' threads did no work: {threads:?}"
    );
    probes.sort();
    eprintln!(
        "readyz median {:?} slowest {:?}, {reads} reads",
        probes[10], probes[19]
    );
    assert!(reads >= 24, "the readers ran ({reads} pages)");
    // The median, so that one hiccup of a busy machine does not decide it.
    assert!(
        probes[10] < Duration::from_millis(100),
        "/readyz took {:?} (median), {:?} at worst",
        probes[10],
        probes[19]
    );
    app.stop().await;
}

/// Niceness and CPU time (clock ticks) of this process's threads named
/// `operators`, from `/proc`.
fn operator_threads() -> Vec<(i64, u64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("a task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != "operators" {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // After the name: state is field 3, utime 14, stime 15, nice 19.
        let fields: Vec<&str> = stat[stat.rfind(')').expect("(comm)") + 2..]
            .split(' ')
            .collect();
        let field = |n: usize| fields[n - 3];
        let ticks = field(14).parse::<u64>().unwrap() + field(15).parse::<u64>().unwrap();
        found.push((field(19).parse().unwrap(), ticks));
    }
    found
}

on_both_stores!(
    every_filter_is_a_search_through_an_index,
    a_payment_is_found_by_its_payment_id,
    a_value_no_store_can_hold_is_a_bad_request,
    operator_reads_never_make_the_store_look_down,
);
