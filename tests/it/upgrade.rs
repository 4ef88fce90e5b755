//! Upgrades over the real binaries: the previous release (tests/PREVIOUS_RELEASE,
//! built from its commit) beside this build on one database, and the fence
//! a newer release's migration closes under this one.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::db::{Backend, TestDb};
use common::mock::{MockAccelerate, Reply};
use common::process::{RelayProcess, BINARY};
use common::release::previous_binary;
use common::*;

const WAIT: Duration = Duration::from_secs(30);
const KEYS: [&str; 2] = [SANDBOX_AUTH, SANDBOX_AUTH_NEW];
/// `RELAY_STORE_KEY` of every replica (the previous release ignores it).
const STORE_KEY: &str = "5a0e2c4f6b8d1a3c5e7f9b0d2a4c6e8f1b3d5a7c9e0f2b4d6a8c1e3f5b7d9a0c";

struct Fleet {
    db: TestDb,
    sandbox: MockAccelerate,
    production: MockAccelerate,
    client: reqwest::Client,
    /// Each event sent, with the Authorization it came with.
    sent: HashMap<String, &'static str>,
}

impl Fleet {
    async fn new(backend: Backend) -> Self {
        Fleet {
            db: TestDb::create(backend).await,
            sandbox: MockAccelerate::start().await,
            production: MockAccelerate::start().await,
            client: reqwest::Client::new(),
            sent: HashMap::new(),
        }
    }

    fn vars(&self) -> Vec<(String, String)> {
        with_overrides(
            base_vars(&self.sandbox, &self.production, self.db.url()),
            &[
                ("RELAY_RETRY_SCHEDULE", &["200ms"; 30].join(",")),
                ("RELAY_STORE_KEY", STORE_KEY),
                // The outages here open the fleet's breaker: its probe
                // comes soon, not after the default 30 s.
                ("RELAY_BREAKER_PROBE_INTERVAL", "1s"),
            ],
        )
    }

    async fn start(&self, binary: &Path, name: &str) -> RelayProcess {
        self.start_with(binary, name, &[]).await
    }

    /// As `start`, with some variables changed (an empty value unsets one).
    async fn start_with(&self, binary: &Path, name: &str, vars: &[(&str, &str)]) -> RelayProcess {
        let log = self.db.dir.path().join(format!("{name}.log"));
        let vars = with_overrides(self.vars(), vars);
        RelayProcess::start_binary(binary, &log, &vars).await
    }

    /// Sends `n` events to `relay`, alternating the sandbox's two keys;
    /// every one must be answered 200.
    async fn send(&mut self, relay: &RelayProcess, prefix: &str, n: usize) {
        for i in 0..n {
            let id = format!("evt_{prefix}_{i}");
            let key = KEYS[i % 2];
            let body = card_holder_event(&id);
            let answer = post_signed_with(
                &self.client,
                &relay.address,
                "sandbox",
                body,
                key,
                SANDBOX_SIG,
            )
            .await
            .expect("an answer");
            assert_eq!(answer.status().as_u16(), 200, "{id} accepted");
            self.sent.insert(id, key);
        }
    }

    /// Every event sent was delivered (answered 2xx) exactly once, with the
    /// Authorization it came with.
    async fn delivered_once_with_their_own_keys(&self) {
        let all = self.sent.len();
        let arrived = eventually(WAIT, || async {
            let mut delivered: Vec<String> = self
                .sandbox
                .received()
                .iter()
                .filter(|r| r.answered == 200)
                .map(|r| r.event_id())
                .collect();
            delivered.sort();
            delivered.dedup();
            delivered.len() == all
        })
        .await;
        assert!(arrived, "all {all} events delivered");
        // A second send of any of them would come within this.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut times: HashMap<String, usize> = HashMap::new();
        for received in self.sandbox.received().iter().filter(|r| r.answered == 200) {
            let id = received.event_id();
            assert_eq!(
                received.header_str("authorization"),
                Some(self.sent[&id]),
                "{id} forwarded with the key it came with"
            );
            *times.entry(id).or_default() += 1;
        }
        let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "delivered more than once: {twice:?}");
        for received in self.sandbox.received() {
            assert!(
                received.header("authorization").is_some(),
                "every attempt carries an Authorization"
            );
        }
    }

    /// Neither key, as text or as the hex a dump writes bytea in.
    fn holds_a_key(&self) -> Option<&'static str> {
        found_in(&self.db.at_rest_bytes(), &KEYS)
    }

    /// Card holder data, as text or hex, in the files or a dump.
    fn holds_card_holder_data(&self) -> Option<&'static str> {
        found_in(&self.db.at_rest_bytes(), &CARD_HOLDER_DATA)
    }

    /// Every row sealed, none left in clear or in an older format.
    async fn all_sealed(&self) {
        assert_eq!(
            self.rows_of_format(2).await,
            self.sent.len() as i64,
            "every row sealed"
        );
        let clear = "SELECT COUNT(*) FROM deliveries WHERE sealed_by IS NULL";
        assert_eq!(self.db.scalar(clear).await, 0, "no row in clear");
        assert_eq!(self.holds_a_key(), None, "no key at rest");
        assert_eq!(
            self.holds_card_holder_data(),
            None,
            "no card holder data at rest"
        );
    }

    async fn rows_of_format(&self, format: i64) -> i64 {
        self.db
            .scalar(&format!(
                "SELECT COUNT(*) FROM deliveries WHERE format = {format}"
            ))
            .await
    }
}

async fn stop(mut relay: RelayProcess) {
    relay.sigterm();
    let status = relay.exit_status(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "stopped cleanly");
}

/// SQLite, in place: the previous release (in clear) stopped with events
/// waiting, this one started on its file with a store key. Every event goes
/// once with its own key, every row is sealed, and neither a key nor card
/// holder data is left in the files.
#[tokio::test]
async fn sqlite_in_place_from_the_previous_release() {
    let previous = previous_binary();
    let mut fleet = Fleet::new(Backend::Sqlite).await;
    fleet.sandbox.set_default(Reply::Status(503));
    let old = fleet.start(&previous, "previous").await;
    fleet.send(&old, "in_place", 20).await;
    stop(old).await;
    assert!(
        fleet.holds_card_holder_data().is_some(),
        "the previous release stores in clear"
    );
    // This release's command beside an older relay's file leaves it as it is.
    let (ok, _, said) =
        common::process::operator_command(fleet.db.dir.path(), &["deliveries", "list"]);
    assert!(
        !ok && said.contains("older than this command knows (version 12)"),
        "{said}"
    );
    assert_eq!(
        fleet.db.scalar("PRAGMA user_version").await,
        11,
        "not migrated by a command"
    );

    fleet.sandbox.set_default(Reply::Status(200));
    let new = fleet.start(Path::new(BINARY), "current").await;
    fleet.delivered_once_with_their_own_keys().await;
    let sealed = eventually(Duration::from_secs(10), || async {
        fleet.holds_card_holder_data().is_none()
    })
    .await;
    assert!(sealed, "no card holder data left in the SQLite files");
    fleet.all_sealed().await;
    stop(new).await;
}

/// PostgreSQL, stop-first: every old replica stopped, then the new ones
/// started (the procedure for any release before the fence, tried here from
/// the previous one).
#[tokio::test]
async fn postgres_stop_first_from_the_previous_release() {
    let previous = previous_binary();
    let mut fleet = Fleet::new(Backend::Postgres).await;
    fleet.sandbox.set_default(Reply::Status(503));
    let (a, b) = (
        fleet.start(&previous, "previous-a").await,
        fleet.start(&previous, "previous-b").await,
    );
    fleet.send(&a, "stop_first_a", 10).await;
    fleet.send(&b, "stop_first_b", 10).await;
    stop(a).await;
    stop(b).await;
    assert!(
        fleet.holds_card_holder_data().is_some(),
        "the previous release stores in clear"
    );

    fleet.sandbox.set_default(Reply::Status(200));
    let (c, d) = (
        fleet.start(Path::new(BINARY), "current-c").await,
        fleet.start(Path::new(BINARY), "current-d").await,
    );
    fleet.delivered_once_with_their_own_keys().await;
    fleet.all_sealed().await;
    stop(c).await;
    stop(d).await;
}

/// PostgreSQL, rolling from the fenced release before this one. This one
/// migrates to a newer schema and seals; the old replica's fence closes
/// (`/readyz` 503, no more claims) but it keeps taking webhooks, written in
/// clear (format 1), which this one's sweep seals. Events go to both while
/// Accelerate fails for a while: every event goes exactly once with its own
/// key, neither replica answers 5xx, and once the old one is gone no row is
/// left in clear and a dump holds no card holder data.
#[tokio::test]
async fn postgres_rolling_beside_the_previous_release() {
    let previous = previous_binary();
    let mut fleet = Fleet::new(Backend::Postgres).await;
    let old = fleet.start(&previous, "previous").await;
    fleet.send(&old, "before", 10).await;
    let new = fleet.start(Path::new(BINARY), "current").await;
    // The overlap, with an outage in the middle of it.
    fleet.send(&old, "overlap_old", 10).await;
    fleet.send(&new, "overlap_new", 10).await;
    fleet.sandbox.set_default(Reply::Status(503));
    fleet.send(&old, "outage_old", 10).await;
    fleet.send(&new, "outage_new", 10).await;
    let fenced = eventually(Duration::from_secs(6), || async {
        readyz(&fleet.client, &old.address).await == 503
    })
    .await;
    assert!(
        fenced,
        "the old replica stops delivering on the newer schema"
    );
    fleet.sandbox.set_default(Reply::Status(200));
    fleet.send(&old, "after_old", 10).await;
    fleet.send(&new, "after_new", 10).await;
    fleet.delivered_once_with_their_own_keys().await;
    stop(old).await;
    let sealed = eventually(Duration::from_secs(10), || async {
        fleet
            .db
            .scalar("SELECT COUNT(*) FROM deliveries WHERE sealed_by IS NULL")
            .await
            == 0
    })
    .await;
    assert!(sealed, "the sweep sealed what the old replica wrote");
    fleet.all_sealed().await;
    stop(new).await;
}

/// Writes what a newer release's migration leaves: a schema version this
/// build does not have.
async fn migrate_as_a_newer_release(db: &TestDb) {
    match db.backend {
        Backend::Sqlite => db.execute("PRAGMA user_version = 999").await,
        Backend::Postgres => {
            db.execute(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES (999, 'from a newer release', true, '\\x00'::bytea, 0)",
            )
            .await
        }
    }
}

/// A newer migration appearing under a running relay closes the fence: no
/// more claims, `/readyz` 503 saying why, an error logged; webhooks are
/// still taken and kept. Started again on it, the relay refuses, naming
/// both versions.
async fn a_newer_schema_stops_delivery_and_then_start(backend: Backend) {
    let mut fleet = Fleet::new(backend).await;
    let relay = fleet.start(Path::new(BINARY), "current").await;
    fleet.send(&relay, "before_fence", 2).await;
    fleet.delivered_once_with_their_own_keys().await;

    migrate_as_a_newer_release(&fleet.db).await;
    let readyz = format!("{}/readyz", relay.address);
    let closed = eventually(Duration::from_secs(6), || async {
        fleet
            .client
            .get(&readyz)
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 503)
    })
    .await;
    assert!(closed, "/readyz turns 503 within a few seconds");
    let (status, why) = answer(fleet.client.get(&readyz).send().await.expect("readyz")).await;
    assert_eq!(status, 503);
    assert_eq!(why["reason"], "schema_newer", "{why}");
    assert!(
        why["message"]
            .as_str()
            .unwrap_or("")
            .contains("version 999"),
        "{why}"
    );

    let before = fleet.sandbox.received().len();
    fleet.send(&relay, "behind_fence", 3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fleet.sandbox.received().len(),
        before,
        "nothing is sent past the fence"
    );
    let kept = fleet
        .db
        .scalar("SELECT COUNT(*) FROM deliveries WHERE event_id LIKE 'evt_behind_fence_%' AND status = 'pending'")
        .await;
    assert_eq!(kept, 3, "webhooks are still accepted and kept");
    let log = std::fs::read_to_string(fleet.db.dir.path().join("current.log")).expect("log");
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("newer than this release knows")),
        "an error is logged: {log}"
    );
    stop(relay).await;

    let refused = Command::new(BINARY)
        .env_clear()
        .envs(fleet.vars())
        .output()
        .expect("run the relay");
    assert!(!refused.status.success(), "refuses to start");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains(
            "schema is version 999, newer than this release of accelerate-relay knows (version 12)"
        ) && said.contains("Run that release or a newer one"),
        "{said}"
    );
}

/// A row a newer release wrote (a format this build does not know) is never
/// claimed: it waits for a replica that knows it.
async fn a_row_of_a_newer_format_is_never_claimed(backend: Backend) {
    let mut fleet = Fleet::new(backend).await;
    fleet.sandbox.set_default(Reply::Status(503));
    let relay = fleet.start(Path::new(BINARY), "current").await;
    fleet.send(&relay, "newer_format", 1).await;
    fleet
        .db
        .execute("UPDATE deliveries SET format = 3 WHERE event_id = 'evt_newer_format_0'")
        .await;
    // An attempt claimed before the update may still end.
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.sandbox.set_default(Reply::Status(200));
    let before = fleet.sandbox.received().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fleet.sandbox.received().len(), before, "not claimed");
    assert_eq!(
        fleet.db.status("evt_newer_format_0").await.as_deref(),
        Some("pending")
    );
    // As if a replica of that release took it: now a format this one knows.
    fleet
        .db
        .execute("UPDATE deliveries SET format = 2 WHERE event_id = 'evt_newer_format_0'")
        .await;
    fleet.delivered_once_with_their_own_keys().await;
    stop(relay).await;
}

/// A store kept in clear (no `RELAY_STORE_KEY`).
const IN_CLEAR: &[(&str, &str)] = &[("RELAY_STORE_KEY", "")];

/// Retention's purge leaves none of the purged events' card holder data in
/// the SQLite files, kept in clear: not in free pages (`secure_delete`), not
/// in the WAL.
#[tokio::test]
async fn a_purge_leaves_no_card_holder_data_in_the_sqlite_files() {
    let mut fleet = Fleet::new(Backend::Sqlite).await;
    let relay = fleet
        .start_with(Path::new(BINARY), "current", IN_CLEAR)
        .await;
    let holder = "Bruce Wayne";
    let fixture = String::from_utf8(fixture("payment_approved.json")).expect("utf-8");
    let original: serde_json::Value = serde_json::from_str(&fixture).expect("json");
    let original_id = original["id"].as_str().expect("id").to_owned();
    assert!(fixture.contains(holder));
    for i in 0..30 {
        let id = format!("evt_purged_{i}");
        let body = fixture.replace(&original_id, &id).into_bytes();
        let answer = post_signed(&fleet.client, &relay.address, "sandbox", body)
            .await
            .expect("an answer");
        assert_eq!(answer.status().as_u16(), 200);
        fleet.sent.insert(id, SANDBOX_AUTH);
    }
    fleet.delivered_once_with_their_own_keys().await;
    stop(relay).await;
    let holds = |bytes: &[u8]| found_in(bytes, &[holder]).is_some();
    assert!(
        holds(&fleet.db.at_rest_bytes()),
        "the events are stored before the purge"
    );

    // Received eight days ago: past the default retention of a week.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let eight_days_ago = now_ms - 8 * 24 * 3600 * 1000;
    fleet
        .db
        .execute(&format!(
            "UPDATE deliveries SET received_at = {eight_days_ago}"
        ))
        .await;
    let relay = fleet
        .start_with(Path::new(BINARY), "current", IN_CLEAR)
        .await;
    let purged = eventually(Duration::from_secs(10), || async {
        fleet.db.scalar("SELECT COUNT(*) FROM deliveries").await == 0
    })
    .await;
    assert!(purged, "the events are purged at start");
    let gone = eventually(Duration::from_secs(5), || async {
        !holds(&fleet.db.at_rest_bytes())
    })
    .await;
    assert!(gone, "no card holder name left in the SQLite files");
    stop(relay).await;
}

mod sqlite {
    #[tokio::test]
    async fn a_row_of_a_newer_format_is_never_claimed() {
        super::a_row_of_a_newer_format_is_never_claimed(super::Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn a_newer_schema_stops_delivery_and_then_start() {
        super::a_newer_schema_stops_delivery_and_then_start(super::Backend::Sqlite).await;
    }
}

mod postgres {
    #[tokio::test]
    async fn a_row_of_a_newer_format_is_never_claimed() {
        super::a_row_of_a_newer_format_is_never_claimed(super::Backend::Postgres).await;
    }

    #[tokio::test]
    async fn a_newer_schema_stops_delivery_and_then_start() {
        super::a_newer_schema_stops_delivery_and_then_start(super::Backend::Postgres).await;
    }
}
