//! Every metric the relay exposes, named in one place, rendered in the
//! Prometheus text format by `metrics-exporter-prometheus`.
//!
//! Each relay (each test's too) has its own recorder rather than a global
//! one, and every label combination is registered up front: recording is an
//! atomic add on a handle, with no lookup on the receive or delivery path.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::activity::Activity;
use crate::event::Environment;
use crate::http::webhook::WebhookResult;
use crate::store::{AttemptKind, AttemptRecord, Claimed, Gauges, Outcome, Timestamp};

pub const WEBHOOKS: &str = "accelerate_relay_webhooks_total";
pub const WEBHOOK_DURATION: &str = "accelerate_relay_webhook_duration_seconds";
pub const ATTEMPTS: &str = "accelerate_relay_delivery_attempts_total";
pub const DEAD: &str = "accelerate_relay_deliveries_dead_total";
pub const ATTEMPT_DURATION: &str = "accelerate_relay_delivery_attempt_duration_seconds";
pub const LAG: &str = "accelerate_relay_delivery_lag_seconds";
pub const DELIVERIES: &str = "accelerate_relay_deliveries";
pub const OLDEST_PENDING: &str = "accelerate_relay_oldest_pending_age_seconds";
pub const STORE_UP: &str = "accelerate_relay_store_up";
pub const BUILD_INFO: &str = "accelerate_relay_build_info";
pub const TLS_EXPIRY: &str = "accelerate_relay_tls_certificate_expiry_timestamp_seconds";
pub const ADMIN_REFUSED: &str = "accelerate_relay_admin_auth_refused_total";
pub const PAUSED: &str = "accelerate_relay_environment_paused";
pub const BREAKER_OPEN: &str = "accelerate_relay_breaker_open";
pub const PACED: &str = "accelerate_relay_delivery_paced_total";
pub const TO_SEAL: &str = "accelerate_relay_store_rows_to_seal";
pub const SEALED: &str = "accelerate_relay_store_rows_sealed_total";

/// Why an admin request or a console sign-in was refused: a wrong or
/// missing token, or an address that guessed too often and must wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    WrongToken,
    Throttled,
}

impl Refusal {
    const ALL: [Refusal; 2] = [Refusal::WrongToken, Refusal::Throttled];

    fn as_str(self) -> &'static str {
        match self {
            Refusal::WrongToken => "wrong_token",
            Refusal::Throttled => "throttled",
        }
    }
}

/// `environment` labels of the receive path: a request may name none.
const WEBHOOK_ENVIRONMENTS: [&str; 3] = ["sandbox", "production", "none"];

pub struct Metrics {
    handle: PrometheusHandle,
    /// Kept to register series known only later (a listener's certificate).
    recorder: metrics_exporter_prometheus::PrometheusRecorder,
    webhooks: Vec<Counter>,
    webhook_duration: Histogram,
    attempts: Vec<Counter>,
    dead: [Counter; 2],
    attempt_duration: [Histogram; 2],
    lag: [Histogram; 2],
    /// Per environment: pending, dead.
    deliveries: [[Gauge; 2]; 2],
    oldest_pending: [Gauge; 2],
    store_up: Gauge,
    admin_refused: [Counter; 2],
    paused: [Gauge; 2],
    breaker_open: [Gauge; 2],
    paced: [Counter; 2],
    /// Per-minute counts of the same events, for the console's chart.
    pub activity: Activity,
    /// Registered at the first sweep with `RELAY_STORE_KEY`: without a key
    /// there is nothing to seal, and a 0 would say all is sealed.
    sealing: std::sync::OnceLock<(Gauge, Counter)>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let seconds = |name: &str, buckets: &[f64], b: PrometheusBuilder| {
            b.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                .expect("bucket lists are not empty")
        };
        let builder = PrometheusBuilder::new();
        let builder = seconds(
            WEBHOOK_DURATION,
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
            builder,
        );
        let builder = seconds(
            ATTEMPT_DURATION,
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
            builder,
        );
        let builder = seconds(
            LAG,
            &[
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
                86400.0,
            ],
            builder,
        );
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let r = Registrar(&recorder);

        r.describe_counter(
            WEBHOOKS,
            "Webhooks answered, by environment and the answer given (result).",
        );
        r.describe_histogram(
            WEBHOOK_DURATION,
            "Time to answer a webhook, the store's commit included.",
        );
        r.describe_counter(
            ATTEMPTS,
            "Delivery attempts to Accelerate, by how they ended (outcome).",
        );
        r.describe_counter(DEAD, "Deliveries that used up the retry schedule.");
        r.describe_histogram(
            ATTEMPT_DURATION,
            "Time of one delivery attempt to Accelerate.",
        );
        r.describe_histogram(
            LAG,
            "Time from receiving an event to Accelerate's 2xx for it.",
        );
        r.describe_gauge(DELIVERIES, "Deliveries waiting (pending) or given up (dead) in the store, read at scrape time; the same on every replica of one database.");
        r.describe_gauge(
            OLDEST_PENDING,
            "Age of the oldest pending delivery, read at scrape time (0 when none).",
        );
        r.describe_gauge(
            STORE_UP,
            "1 when the store answered the scrape's queries, else 0.",
        );
        r.describe_counter(
            ADMIN_REFUSED,
            "Admin API requests and console sign-ins refused, by reason: wrong_token (missing or wrong), throttled (the address guessed too often and waits).",
        );
        r.describe_gauge(
            PAUSED,
            "1 while an operator has paused deliveries to the environment (every replica obeys it), else 0.",
        );
        r.describe_gauge(
            BREAKER_OPEN,
            "1 while the environment's breaker is open: Accelerate failed RELAY_BREAKER_FAILURES attempts in a row, and only a probe goes out each RELAY_BREAKER_PROBE_INTERVAL.",
        );
        r.describe_counter(
            PACED,
            "Delivery attempts that waited for their place in RELAY_DELIVERY_RATE before going out.",
        );
        r.describe_gauge(BUILD_INFO, "The relay's version, as a label; always 1.");
        r.describe_gauge(
            TLS_EXPIRY,
            "When the certificate a listener serves expires (notAfter, seconds since the epoch); only with RELAY_TLS_CERT.",
        );

        let webhooks = WEBHOOK_ENVIRONMENTS
            .iter()
            .flat_map(|env| WebhookResult::ALL.map(move |result| (*env, result.as_str())))
            .map(|(env, result)| r.counter(WEBHOOKS, &[("environment", env), ("result", result)]))
            .collect();
        let attempts = Environment::ALL
            .iter()
            .flat_map(|env| {
                AttemptKind::ALL
                    .iter()
                    .map(move |k| (env.as_str(), k.as_str()))
            })
            .map(|(env, kind)| r.counter(ATTEMPTS, &[("environment", env), ("outcome", kind)]))
            .collect();
        let per_env = |f: &dyn Fn(&'static str) -> Counter| Environment::ALL.map(|e| f(e.as_str()));
        let dead = per_env(&|env| r.counter(DEAD, &[("environment", env)]));
        let histogram = |name: &'static str| {
            Environment::ALL.map(|e| r.histogram(name, &[("environment", e.as_str())]))
        };
        let gauge_pair = |env: &'static str| {
            ["pending", "dead"]
                .map(|status| r.gauge(DELIVERIES, &[("environment", env), ("status", status)]))
        };
        r.gauge(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))])
            .set(1.0);
        Arc::new(Self {
            handle,
            webhooks,
            webhook_duration: r.histogram(WEBHOOK_DURATION, &[]),
            attempts,
            dead,
            attempt_duration: histogram(ATTEMPT_DURATION),
            lag: histogram(LAG),
            deliveries: Environment::ALL.map(|e| gauge_pair(e.as_str())),
            oldest_pending: Environment::ALL
                .map(|e| r.gauge(OLDEST_PENDING, &[("environment", e.as_str())])),
            store_up: r.gauge(STORE_UP, &[]),
            admin_refused: Refusal::ALL
                .map(|why| r.counter(ADMIN_REFUSED, &[("reason", why.as_str())])),
            paused: Environment::ALL.map(|e| r.gauge(PAUSED, &[("environment", e.as_str())])),
            breaker_open: Environment::ALL
                .map(|e| r.gauge(BREAKER_OPEN, &[("environment", e.as_str())])),
            paced: per_env(&|env| r.counter(PACED, &[("environment", env)])),
            activity: Activity::default(),
            sealing: std::sync::OnceLock::new(),
            recorder,
        })
    }

    /// A sealing round: rows it sealed, rows still not sealed with the first key.
    pub fn sealing(&self, sealed: u64, left: u64) {
        let (to_seal, total) = self.sealing.get_or_init(|| {
            let r = Registrar(&self.recorder);
            r.describe_gauge(TO_SEAL, "Stored deliveries not yet sealed with the first RELAY_STORE_KEY (in clear, or sealed with an older key); the sweep seals up to 1,000 a second. Only with RELAY_STORE_KEY.");
            r.describe_counter(SEALED, "Stored deliveries this replica sealed, or moved to the first RELAY_STORE_KEY after a rotation.");
            (r.gauge(TO_SEAL, &[]), r.counter(SEALED, &[]))
        });
        to_seal.set(left as f64);
        total.increment(sealed);
    }

    /// The expiry gauge of a listener that serves TLS (`webhooks`, `admin`);
    /// absent for a listener that does not, so no alert sees a 0.
    pub fn tls_expiry(&self, listener: &'static str) -> Gauge {
        Registrar(&self.recorder).gauge(TLS_EXPIRY, &[("listener", listener)])
    }

    /// One answer of the receive path.
    pub fn webhook(&self, environment: Option<Environment>, result: WebhookResult, took: Duration) {
        let env = environment.map_or(2, Environment::index);
        self.webhooks[env * WebhookResult::ALL.len() + result as usize].increment(1);
        self.webhook_duration.record(took.as_secs_f64());
        if let (Some(environment), WebhookResult::Accepted) = (environment, result) {
            self.activity.accepted(environment, Timestamp::now());
        }
    }

    /// One refused admin request or console sign-in.
    pub fn admin_refused(&self, why: Refusal) {
        self.admin_refused[why as usize].increment(1);
    }

    /// One delivery attempt and what it led to.
    pub fn attempt(&self, claim: &Claimed, made: &AttemptRecord, outcome: &Outcome) {
        let env = claim.environment.index();
        self.attempts[env * AttemptKind::ALL.len() + made.kind as usize].increment(1);
        self.attempt_duration[env].record(made.duration.as_secs_f64());
        let delivered = made.kind == AttemptKind::Delivered;
        self.activity
            .attempt(claim.environment, made.started_at, delivered);
        match outcome {
            Outcome::Delivered { at, .. } => {
                let lag = claim.received_at.until(*at);
                self.lag[env].record(lag.as_secs_f64());
            }
            Outcome::Dead { .. } => self.dead[env].increment(1),
            Outcome::Retry { .. } | Outcome::Held { .. } => {}
        }
    }

    /// An environment's delivery controls as this replica knows them.
    pub fn control(&self, env: Environment, paused: bool, breaker_open: bool) {
        self.paused[env.index()].set(f64::from(u8::from(paused)));
        self.breaker_open[env.index()].set(f64::from(u8::from(breaker_open)));
    }

    /// One attempt that waited for its place in the pace.
    pub fn paced(&self, env: Environment) {
        self.paced[env.index()].increment(1);
    }

    /// The text of `/metrics`, with the store's gauges as just read (`None`
    /// when the store did not answer: the gauges keep their last values and
    /// `store_up` says 0).
    pub fn render(&self, store: Option<&[Gauges]>, now: Timestamp) -> String {
        match store {
            Some(gauges) => {
                self.store_up.set(1.0);
                for env in Environment::ALL {
                    let read = gauges.iter().find(|g| g.environment == env.as_str());
                    let i = env.index();
                    let (pending, dead) = read.map_or((0, 0), |g| (g.pending, g.dead));
                    self.deliveries[i][0].set(pending as f64);
                    self.deliveries[i][1].set(dead as f64);
                    let age = read
                        .and_then(|g| g.oldest_pending)
                        .map_or(0.0, |t| t.until(now).as_secs_f64());
                    self.oldest_pending[i].set(age);
                }
            }
            None => self.store_up.set(0.0),
        }
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets. Run every few
    /// seconds, so samples never pile up between scrapes (or without any).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// Registers handles on one recorder.
struct Registrar<'a, R: Recorder>(&'a R);

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl<R: Recorder> Registrar<'_, R> {
    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, (*v).to_owned()))
            .collect();
        Key::from_parts(name, labels)
    }
    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.0.register_counter(&Self::key(name, labels), &METADATA)
    }
    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.0.register_gauge(&Self::key(name, labels), &METADATA)
    }
    fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.0
            .register_histogram(&Self::key(name, labels), &METADATA)
    }
    fn describe_counter(&self, name: &'static str, help: &'static str) {
        self.0
            .describe_counter(KeyName::from_const_str(name), None, help.into());
    }
    fn describe_gauge(&self, name: &'static str, help: &'static str) {
        self.0
            .describe_gauge(KeyName::from_const_str(name), None, help.into());
    }
    fn describe_histogram(&self, name: &'static str, help: &'static str) {
        self.0.describe_histogram(
            KeyName::from_const_str(name),
            Some(Unit::Seconds),
            help.into(),
        );
    }
}
