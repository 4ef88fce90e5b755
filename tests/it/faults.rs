//! Faults around the relay: Accelerate down, failing and slow for a long
//! stretch; the disk under SQLite filling up.

use crate::common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use futures_util::FutureExt;

use common::process::{statuses, ClosedPort, RelayProcess};
use common::*;

const WAIT: Duration = Duration::from_secs(60);

async fn send_to(client: &reqwest::Client, address: &str, body: Vec<u8>) -> u16 {
    post_signed(client, address, "sandbox", body)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// An approved event padded to about `size` bytes, as a large card payment with
/// many line items would be.
fn large_event(id: &str, size: usize) -> Vec<u8> {
    let mut body = approved_event(id);
    body.truncate(body.len() - 1);
    let padding = size.saturating_sub(body.len() + 20);
    body.extend_from_slice(format!(r#","items":"{}"}}"#, "x".repeat(padding)).as_bytes());
    body
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accelerate_down_then_failing_then_slow_then_back_loses_nothing_with_flat_memory() {
    let dir = tempfile::tempdir().expect("dir");
    let down = ClosedPort::new();
    let url = format!("http://127.0.0.1:{}/webhooks/checkoutdotcom", down.port());
    let schedule = vec!["200ms"; 100].join(",");
    let relay = RelayProcess::start(
        dir.path(),
        &url,
        &[
            ("RELAY_RETRY_SCHEDULE", &schedule),
            ("RELAY_DELIVERY_TIMEOUT_MS", "300"),
            ("RELAY_LEASE_MS", "2000"),
        ],
    )
    .await;
    let pid = relay.child.id();
    let client = reqwest::Client::new();
    const EVENTS: usize = 1000;
    const SIZE: usize = 50 * 1024;

    // Phase 1: Accelerate down (connection refused) while a backlog builds up.
    let mut rss = Vec::new();
    for i in 0..EVENTS {
        let status = send_to(
            &client,
            &relay.address,
            large_event(&format!("evt_out{i:04}"), SIZE),
        )
        .await;
        assert_eq!(status, 200);
        if i == EVENTS / 4 || i == EVENTS - 1 {
            rss.push(rss_kib(pid));
        }
    }
    let accelerate = MockAccelerate::start_on(down.listen()).await;
    // Phase 2: answering 500.
    accelerate.set_default(Reply::Status(500));
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss.push(rss_kib(pid));
    // Phase 3: slower than the delivery timeout.
    accelerate.set_default(Reply::Slow(Duration::from_secs(1), 200));
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss.push(rss_kib(pid));
    // Back.
    accelerate.set_default(Reply::Status(200));

    let all = eventually(WAIT, || async {
        statuses(dir.path())
            .await
            .iter()
            .all(|(_, s)| s == "delivered")
    })
    .await;
    let states = statuses(dir.path()).await;
    let dead = states.iter().filter(|(_, s)| s == "dead").count();
    let failed_attempts = accelerate
        .received()
        .iter()
        .filter(|r| r.header_str("x-relay-attempt") != Some("1"))
        .count();
    println!(
        "outage run: events={EVENTS} of {SIZE} bytes, attempts seen by Accelerate={} (retries {failed_attempts}), dead={dead}, rss_kib at 1/4, all queued, during 500s, during slow = {rss:?}",
        accelerate.received().len()
    );
    assert!(all, "everything delivered once Accelerate is back");
    assert_eq!(dead, 0, "nothing dead before the schedule was used up");
    let delivered: HashSet<String> = accelerate.event_ids().into_iter().collect();
    assert_eq!(delivered.len(), EVENTS);
    // 37 MiB more of pending bodies between the first and the second sample: an
    // in-memory queue would grow by that much; the relay keeps them on disk.
    let growth = rss.iter().max().expect("samples") - rss[0];
    assert!(
        growth < 16 * 1024,
        "memory grew by {growth} KiB with the backlog: {rss:?}"
    );
}

/// Mounts a tmpfs of `size` at `dir`; `false` (and a loud message) where the
/// machine refuses.
fn mount_small_disk(dir: &Path, size: &str) -> bool {
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status();
    match status {
        Ok(s) if s.success() => true,
        other => {
            eprintln!("\n\n!!! SKIPPED: full-disk test: mounting a tmpfs was refused ({other:?}); run as root to test it !!!\n");
            false
        }
    }
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0)
            .status();
    }
}

/// Fills the filesystem at `dir` to the last byte.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).and_then(|_| file.flush()).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_answers_503_never_2xx_and_recovers_when_space_is_freed() {
    let outer = tempfile::tempdir().expect("dir");
    let disk = outer.path().join("disk");
    std::fs::create_dir(&disk).expect("mkdir");
    if !mount_small_disk(&disk, "64m") {
        return;
    }
    let _unmount = Unmount(&disk);
    // Accelerate is down while the disk is full, so whatever is answered 200
    // can only reach it later from the file, after a `kill -9` and a restart.
    let closed = ClosedPort::new();
    let down = format!("http://127.0.0.1:{}/webhooks/checkoutdotcom", closed.port());
    // The database on the small disk; the relay's log beside it, on the big one.
    let db_url = format!("sqlite://{}", disk.join("relay.db").display());
    // Retries never run out while Accelerate is down: the test is about the store.
    let schedule = vec!["100ms"; 1000].join(",");
    let settings = [
        ("RELAY_DATABASE_URL", db_url.as_str()),
        ("RELAY_RETRY_SCHEDULE", schedule.as_str()),
    ];
    let mut relay = RelayProcess::start(outer.path(), &down, &settings).await;
    let client = reqwest::Client::new();
    assert_eq!(
        send_to(&client, &relay.address, approved_event("evt_before_full")).await,
        200
    );

    let filler = fill(&disk);
    let mut accepted = vec!["evt_before_full".to_owned()];
    let mut refused = Vec::new();
    for i in 0..300 {
        let id = format!("evt_full{i:03}");
        match send_to(&client, &relay.address, large_event(&id, 8 * 1024)).await {
            200 => accepted.push(id),
            503 => refused.push(id),
            other => panic!("{id}: answered {other}; expected 200 or 503"),
        }
    }
    println!(
        "full disk: answered 200: {}, answered 503: {}",
        accepted.len() - 1,
        refused.len()
    );
    assert!(!refused.is_empty(), "a full disk must refuse with 503");
    assert_eq!(
        readyz(&client, &relay.address).await,
        503,
        "not ready while nothing can be committed"
    );

    // Space comes back: the same process recovers by itself.
    std::fs::remove_file(&filler).expect("free the space");
    assert!(
        eventually(WAIT, || readyz(&client, &relay.address).map(|s| s == 200)).await,
        "ready again by itself"
    );
    let retried = refused.split_off(refused.len() / 2);
    for id in &retried {
        let status = send_to(&client, &relay.address, large_event(id, 8 * 1024)).await;
        assert_eq!(status, 200, "{id} after space was freed");
        accepted.push(id.clone());
    }

    // Every 200 is in the file: kill -9, restart against a live Accelerate.
    relay.kill_9();
    let accelerate = MockAccelerate::start().await;
    let relay = RelayProcess::start(outer.path(), &accelerate.url(), &settings).await;
    let on_disk: HashSet<String> = statuses(&disk)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|id| !on_disk.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "answered 200 but not in the database after kill -9: {lost:?}"
    );
    let stored_refused: Vec<&String> = refused.iter().filter(|id| on_disk.contains(*id)).collect();
    assert!(
        stored_refused.is_empty(),
        "answered 503 but stored: {stored_refused:?}"
    );
    let delivered = eventually(WAIT, || async {
        let got: HashSet<String> = accelerate.event_ids().into_iter().collect();
        accepted.iter().all(|id| got.contains(id))
    })
    .await;
    assert!(delivered, "every event answered 200 reached Accelerate");
    drop(relay);
}
