//! Test harness: the real application on port 0 with a temporary SQLite file,
//! mock Accelerates that are real HTTP servers, and Checkout.com-style signing.

pub mod browser;
pub mod db;
pub mod mock;
pub mod operator;
pub mod process;
pub mod proxy;
pub mod release;
pub mod tls;

/// Runs each named `async fn(Backend)` as two tests, `sqlite::NAME` and
/// `postgres::NAME`: one suite, both stores.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(crate::common::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(crate::common::Backend::Postgres).await })*
        }
    };
}

use std::time::Duration;

use accelerate_relay::config::Config;
use accelerate_relay::store::Store;
use accelerate_relay::Application;
use actix_web::dev::ServerHandle;
use tokio::task::JoinHandle;

pub use db::{Backend, TestDb};
pub use mock::{MockAccelerate, Reply};

pub const SANDBOX_AUTH: &str = "sbx-authorization-key-1";
pub const SANDBOX_AUTH_NEW: &str = "sbx-authorization-key-2";
pub const SANDBOX_SIG: &str = "sbx-signature-key-1";
pub const SANDBOX_SIG_NEW: &str = "sbx-signature-key-2";
pub const PRODUCTION_AUTH: &str = "prd-authorization-key-1";
pub const PRODUCTION_SIG: &str = "prd-signature-key-1";

/// Fixtures that are relayed, with the environment each is sent to.
pub const RELAYED: &[(&str, &str)] = &[
    ("payment_approved.json", "sandbox"),
    ("payment_declined.json", "sandbox"),
    ("payment_approved_unusual.json", "sandbox"),
    ("payment_approved_production.json", "production"),
    ("payment_declined_production.json", "production"),
];

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

pub fn sign(key: &str, body: &[u8]) -> String {
    accelerate_relay::verify::sign(key.as_bytes(), body)
}

/// A small real-shaped approved event with its own id and token.
pub fn approved_event(id: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","type":"payment_approved","version":"1.0.33","created_on":"2026-11-24T14:15:22Z","data":{{"id":"pay_{id}","amount":6540,"currency":"USD","approved":true,"metadata":{{"AccelerateToken":"tok_acc_{id}_0123456789"}}}},"_links":{{}}}}"#
    )
    .into_bytes()
}

/// Card holder data in `fixtures/payment_approved.json`: name, email,
/// billing address, card fingerprint.
pub const CARD_HOLDER_DATA: [&str; 5] = [
    "Bruce Wayne",
    "brucewayne@example.com",
    "123 High St.",
    "SW1A 1AA",
    "F31828E2BDABAE63EB6949",
];

/// The fixture's approved payment, with card holder data, as event `id`.
pub fn card_holder_event(id: &str) -> Vec<u8> {
    let fixture = String::from_utf8(fixture("payment_approved.json")).expect("utf-8");
    fixture
        .replace("evt_az5sblvku4ge3dwpztvyizgcau", id)
        .into_bytes()
}

/// The first of `needles` found in `haystack`, as bytes or as the hex a
/// `pg_dump` writes a bytea in.
pub fn found_in<'n>(haystack: &[u8], needles: &[&'n str]) -> Option<&'n str> {
    let has = |needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    needles
        .iter()
        .copied()
        .find(|n| has(n.as_bytes()) || has(hex::encode(n).as_bytes()))
}

pub fn keys_for(env: &str) -> (&'static str, &'static str) {
    match env {
        "production" => (PRODUCTION_AUTH, PRODUCTION_SIG),
        _ => (SANDBOX_AUTH, SANDBOX_SIG),
    }
}

/// Both environments on, each with its own mock Accelerate, fast retries.
pub fn base_vars(
    sandbox: &MockAccelerate,
    production: &MockAccelerate,
    db_url: &str,
) -> Vec<(String, String)> {
    [
        ("RELAY_LISTEN", "127.0.0.1:0".to_owned()),
        ("RELAY_DATABASE_URL", db_url.to_owned()),
        (
            "CKO_SANDBOX_AUTHORIZATION_KEY",
            format!("{SANDBOX_AUTH},{SANDBOX_AUTH_NEW}"),
        ),
        (
            "CKO_SANDBOX_SIGNATURE_KEY",
            format!("{SANDBOX_SIG},{SANDBOX_SIG_NEW}"),
        ),
        (
            "CKO_PRODUCTION_AUTHORIZATION_KEY",
            PRODUCTION_AUTH.to_owned(),
        ),
        ("CKO_PRODUCTION_SIGNATURE_KEY", PRODUCTION_SIG.to_owned()),
        ("ACCELERATE_SANDBOX_URL", sandbox.url()),
        ("ACCELERATE_PRODUCTION_URL", production.url()),
        ("RELAY_RETRY_SCHEDULE", "100ms,200ms,300ms".to_owned()),
        ("RELAY_DELIVERY_TIMEOUT_MS", "2000".to_owned()),
        ("RELAY_SHUTDOWN_GRACE_MS", "3000".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Applies overrides; an empty value unsets the variable.
pub fn with_overrides(
    mut vars: Vec<(String, String)>,
    overrides: &[(&str, &str)],
) -> Vec<(String, String)> {
    for (key, value) in overrides {
        vars.retain(|(k, _)| k != key);
        if !value.is_empty() {
            vars.push((key.to_string(), value.to_string()));
        }
    }
    vars
}

pub struct TestApp {
    pub address: String,
    /// Where the admin API and `/metrics` are, with `RELAY_ADMIN_LISTEN` set.
    pub admin_address: Option<String>,
    pub store: Store,
    pub health: accelerate_relay::supervise::Health,
    pub sandbox: MockAccelerate,
    pub production: MockAccelerate,
    pub db: TestDb,
    pub client: reqwest::Client,
    vars: Vec<(String, String)>,
    handle: ServerHandle,
    join: JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    /// The attempt history of the one delivery of `event_id`, once it has `n` attempts.
    pub async fn history_of(
        &self,
        event_id: &str,
        n: usize,
    ) -> Vec<accelerate_relay::store::AttemptView> {
        let mut history = Vec::new();
        for _ in 0..200 {
            let listed = self
                .store
                .list(
                    &accelerate_relay::store::ListFilter::parse([("event_id", event_id)])
                        .expect("filter"),
                )
                .await
                .expect("list");
            if let Some(found) = listed.first() {
                let detail = self
                    .store
                    .detail(found.id)
                    .await
                    .expect("detail")
                    .expect("found");
                history = detail.attempt_history;
                if history.len() >= n {
                    return history;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{event_id}: {n} attempts expected, history {history:?}");
    }

    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    pub async fn spawn_with(backend: Backend, overrides: &[(&str, &str)]) -> Self {
        let sandbox = MockAccelerate::start().await;
        let production = MockAccelerate::start().await;
        let db = TestDb::create(backend).await;
        let vars = with_overrides(base_vars(&sandbox, &production, db.url()), overrides);
        Self::start(vars, db, sandbox, production).await
    }

    async fn start(
        vars: Vec<(String, String)>,
        db: TestDb,
        sandbox: MockAccelerate,
        production: MockAccelerate,
    ) -> Self {
        let config = Config::from_vars(vars.clone()).expect("test configuration is valid");
        let app = Application::build(config)
            .await
            .expect("application builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let admin_address = app.admin_port().map(|p| format!("http://127.0.0.1:{p}"));
        let store = app.store();
        let health = app.health();
        let handle = app.handle();
        let join = tokio::spawn(app.run_until_stopped());
        TestApp {
            address,
            admin_address,
            store,
            health,
            sandbox,
            production,
            db,
            // Idle connections are dropped before the relay's keep-alive (actix's
            // 5 s) closes them: a request sent on one the relay is closing at
            // that moment is reset, as a /metrics read after a 5 s wait was.
            client: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(2))
                .build()
                .expect("a client"),
            vars,
            handle,
            join,
        }
    }

    /// As `restart`, with some variables changed (an empty value unsets one).
    pub async fn restart_with(mut self, overrides: &[(&str, &str)]) -> Self {
        self.vars = with_overrides(std::mem::take(&mut self.vars), overrides);
        self.restart().await
    }

    /// Stops cleanly (as SIGTERM does) and starts again on the same store,
    /// the same mocks and the same configuration.
    pub async fn restart(self) -> Self {
        self.restart_after(async |_| {}).await
    }

    /// As `restart`, doing `between` to the store while the relay is stopped.
    pub async fn restart_after(self, between: impl AsyncFnOnce(&TestDb)) -> Self {
        self.handle.stop(true).await;
        self.join
            .await
            .expect("the relay task ends")
            .expect("the relay stops cleanly");
        between(&self.db).await;
        Self::start(self.vars, self.db, self.sandbox, self.production).await
    }

    /// POSTs `body` with the given header values (each may be absent).
    pub async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        authorization: Option<&str>,
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}{path}", self.address))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        if let Some(s) = signature {
            request = request.header("cko-signature", s);
        }
        request.send().await.expect("the relay answers")
    }

    /// Sends `body` to `/webhooks/checkoutdotcom/{env}` as Checkout.com would.
    pub async fn send(&self, env: &str, body: Vec<u8>) -> reqwest::Response {
        post_signed(&self.client, &self.address, env, body)
            .await
            .expect("the relay answers")
    }

    pub async fn send_json(&self, env: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        answer(self.send(env, body).await).await
    }

    /// Stops like SIGTERM does and waits for the relay to finish.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        self.join
            .await
            .expect("the relay task ends")
            .expect("the relay stops cleanly");
    }

    /// The text of `/metrics` (on the admin listener when there is one).
    pub async fn metrics_text(&self) -> String {
        let base = self.admin_address.as_deref().unwrap_or(&self.address);
        self.client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The webhook port.
    pub fn port(&self) -> u16 {
        self.address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// A delivery's status as committed (what is there is what is on disk).
    pub async fn status_on_disk(&self, event_id: &str) -> Option<String> {
        self.db.status(event_id).await
    }

    /// Whether the event's delivery is stored with `status` within `within`.
    pub async fn reaches_status(&self, event_id: &str, status: &str, within: Duration) -> bool {
        eventually(within, || async {
            self.status_on_disk(event_id).await.as_deref() == Some(status)
        })
        .await
    }
}

/// The body of a GET that must answer.
pub async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .text()
        .await
        .expect("text")
}

/// The error `Config` gives for the sandbox keys plus `extra`; panics if it
/// accepts them.
pub fn config_error(extra: &[(&str, &str)]) -> String {
    let vars = [
        ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
        ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()));
    match Config::from_vars(vars) {
        Ok(_) => panic!("{extra:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

/// POSTs `body` to `{address}/webhooks/checkoutdotcom/{env}` signed as
/// Checkout.com would, with that environment's keys.
pub async fn post_signed(
    client: &reqwest::Client,
    address: &str,
    env: &str,
    body: Vec<u8>,
) -> reqwest::Result<reqwest::Response> {
    let (auth, key) = keys_for(env);
    post_signed_with(client, address, env, body, auth, key).await
}

/// The same with an Authorization value and signature key of the caller's.
pub async fn post_signed_with(
    client: &reqwest::Client,
    address: &str,
    env: &str,
    body: Vec<u8>,
    authorization: &str,
    signature_key: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{address}/webhooks/checkoutdotcom/{env}"))
        .header("content-type", "application/json")
        .header("authorization", authorization)
        .header("cko-signature", sign(signature_key, &body))
        .body(body)
        .send()
        .await
}

/// `/readyz`'s status, 0 when nothing answers.
pub async fn readyz(client: &reqwest::Client, address: &str) -> u16 {
    client
        .get(format!("{address}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

pub async fn answer(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("an answer body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, body)
}

/// Polls `check` until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
