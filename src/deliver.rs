//! The delivery worker: claims due deliveries, POSTs the stored bytes to
//! Accelerate with the stored headers, and records what happened.
//!
//! It never touches an HTTP request of Checkout.com's. The receive path hands
//! it each event through `Intake`, the one place that stores an event for
//! delivery: committed, then handed over in memory (inserted already claimed,
//! while the worker's queue has room) or left to the poller, which is woken.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, CONTENT_LENGTH, PROXY_AUTHORIZATION, RETRY_AFTER, USER_AGENT,
};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::control::{Admit, Claims, Gate, REFRESH};
use crate::egress::{self, Connector};
use crate::event::Environment;
use crate::metrics::Metrics;
use crate::retry::{next_wait, parse_retry_after, RetrySchedule};
use crate::seal::SealError;
use crate::secret::Secret;
use crate::store::{
    Accepted, AttemptKind, AttemptRecord, Claimed, DeliveryId, Forward, NewEvent, Outcome, Store,
    StoreError, Timestamp,
};
use crate::verify::{KeyRef, Resolved};

pub const USER_AGENT_VALUE: &str = concat!("accelerate-relay/", env!("CARGO_PKG_VERSION"));

/// Longest idle sleep: bounds how late a delivery made due elsewhere (a manual
/// retry from the CLI, another replica) is noticed.
const POLL: Duration = Duration::from_millis(500);
/// Most of Accelerate's answer read (to keep the connection reusable); the rest is dropped.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest wait for the body of an answer whose status line has come (within
/// the attempt's timeout): Accelerate's answers are small, and a sending slot
/// is not held for a body that decides nothing.
const ANSWER_BODY_WAIT: Duration = Duration::from_secs(1);

/// What one step of the worker did, so tests can drive the queue step by step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Delivered,
    Retried,
    Dead,
    /// Failed while the breaker is open: pending, its schedule untouched.
    Held,
    Empty,
}

/// HTTP/1.1 to Accelerate, over TLS (Mozilla's roots, built in, and any
/// `RELAY_ACCELERATE_CA_FILE`) or plain HTTP, directly or through a proxy
/// (`egress`), with idle connections kept per host. hyper's client without
/// reqwest's layers above it: those (redirect bookkeeping even with
/// redirects off, a URL parsed again from every answer) were 38% of an
/// attempt's instructions (bench/README.md).
type Client = hyper_util::client::legacy::Client<HttpsConnector<Connector>, Full<Bytes>>;

/// The hand-over from the receive path to the worker.
#[derive(Clone)]
pub struct Intake {
    store: Store,
    wake: Arc<Notify>,
    /// Room for a round of attempts: beyond it, events go to the poller.
    handoff: mpsc::Sender<Claimed>,
    lease: Duration,
    /// A paused, held or broken environment's events wait in the store.
    gate: Arc<Gate>,
}

impl Intake {
    pub fn new(
        store: Store,
        wake: Arc<Notify>,
        handoff: mpsc::Sender<Claimed>,
        lease: Duration,
        gate: Arc<Gate>,
    ) -> Self {
        Self {
            store,
            wake,
            handoff,
            lease,
            gate,
        }
    }

    /// Stores `event` (its `leased_until` is this call's to set); `Ok` once
    /// committed. A new event goes to the worker at once.
    pub async fn accept(&self, mut event: NewEvent) -> Result<Accepted, StoreError> {
        // With room in the worker's queue, the event is inserted already
        // claimed and handed over in memory once committed.
        let handover = self
            .gate
            .takes_handover(event.environment)
            .then(|| self.handoff.clone().try_reserve_owned().ok())
            .flatten();
        event.leased_until = handover
            .as_ref()
            .map(|_| event.received_at.plus(self.lease));
        // What the worker needs of it, taken before the event moves into the store.
        let first = handover.map(|permit| (permit, event.first_claim(DeliveryId(0))));
        let accepted = self.store.accept(event).await?;
        if let Accepted::New(id) = accepted {
            match first {
                Some((permit, claim)) => {
                    permit.send(Claimed { id, ..claim });
                }
                None => self.wake.notify_one(),
            }
        }
        Ok(accepted)
    }
}

/// Why the HTTP client for Accelerate could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS set-up: {0}")]
pub struct ClientError(#[from] rustls::Error);

#[derive(Clone)]
pub struct Worker {
    store: Store,
    client: Client,
    timeout: Duration,
    schedule: RetrySchedule,
    lease: Duration,
    concurrency: usize,
    wake: Arc<Notify>,
    metrics: Option<Arc<Metrics>>,
    /// Accelerate's URLs, and the configuration's keys: stored deliveries
    /// name their Authorization key, and the value sent is looked up here.
    config: Arc<Config>,
    /// First attempts handed over by the receive path (see `with_handoff`).
    handed: Option<Arc<tokio::sync::Mutex<mpsc::Receiver<Claimed>>>>,
    /// `Proxy-Authorization` for each environment's plain-HTTP URL sent
    /// through a proxy with credentials (sandbox, production).
    proxy_authorization: [Option<HeaderValue>; 2],
    /// Pause, breaker, `Retry-After`, pace and in-flight cap per environment.
    gate: Arc<Gate>,
    /// When each environment without keys was last claimed (ms): its
    /// leftovers are looked for once a `POLL`, not on every round.
    keyless_looked: Arc<[AtomicI64; 2]>,
}

impl Worker {
    /// `wake` is notified by the receive path after each commit, so a new event
    /// goes out at once instead of at the next poll.
    pub fn new(
        config: &Config,
        store: Store,
        wake: Arc<Notify>,
        gate: Arc<Gate>,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            store,
            client: client(config)?,
            timeout: config.delivery_timeout,
            schedule: config.retry_schedule.clone(),
            lease: config.lease,
            concurrency: config.delivery_concurrency.max(1),
            wake,
            metrics: None,
            config: Arc::new(config.clone()),
            handed: None,
            proxy_authorization: Environment::ALL
                .map(|env| config.proxies.authorization_for(config.accelerate_url(env))),
            gate,
            keyless_looked: Arc::default(),
        })
    }

    /// Takes first attempts from the receive path in memory as well as
    /// claiming due deliveries from the store. Behind a lock, so the worker a
    /// supervisor restarts after a panic takes them over.
    pub fn with_handoff(mut self, handed: mpsc::Receiver<Claimed>) -> Self {
        self.handed = Some(Arc::new(tokio::sync::Mutex::new(handed)));
        self
    }

    /// Counts every attempt in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Claims one due delivery the controls let through, attempts it and
    /// records the outcome.
    pub async fn deliver_next(&self) -> Result<Step, StoreError> {
        for env in Environment::ALL {
            let now = Timestamp::now();
            let probe = match self.gate.claims(env, now).await? {
                Claims::None | Claims::Up(0) => continue,
                Claims::Probe => true,
                Claims::Up(_) => false,
            };
            let Some(claim) = self.store.claim_due(now, self.lease, env, 1).await?.pop() else {
                continue;
            };
            let _started = self.gate.started(env);
            let ticket = self.gate.queue(env);
            return match self.gate.admit(env, probe, ticket).await {
                Admit::Go(_in_flight) => self.deliver(claim).await,
                Admit::Hold(_) => {
                    self.release(&claim).await;
                    Ok(Step::Empty)
                }
            };
        }
        Ok(Step::Empty)
    }

    /// Runs until `stop` turns true, then lets the attempts in flight finish
    /// (up to `grace`; an attempt still running then keeps its lease and is
    /// made again after restart). Deliveries claimed ahead and not started are
    /// released: due now, their attempt count as it was before the claim.
    ///
    /// Claims run ahead of sending: up to twice `concurrency` deliveries are
    /// claimed and not yet recorded, while at most `concurrency` attempts talk
    /// to Accelerate. So neither a claim nor the commit of an outcome ever holds
    /// a sending slot, and claims come in batches rather than one per freed slot.
    pub async fn run(self, mut stop: watch::Receiver<bool>, grace: Duration) {
        let sending = Arc::new(Semaphore::new(self.concurrency));
        let outstanding = Arc::new(Semaphore::new(self.concurrency * 2));
        let handed_room = Arc::new(Semaphore::new(self.concurrency * 2));
        let from_memory = tokio::spawn(self.clone().take_handed(
            Arc::clone(&handed_room),
            Arc::clone(&sending),
            stop.clone(),
        ));
        let batch = (self.concurrency / 2).max(1);
        let mut backoff = Duration::from_millis(100);
        while !*stop.borrow() {
            let room = outstanding.available_permits();
            let busy = room < self.concurrency * 2;
            // With work in progress, wait until a batch's worth of room is free.
            if busy && room < batch {
                tokio::select! {
                    _ = outstanding.acquire_many(batch as u32) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let claims = match self.claim_round(room).await {
                Ok(round) => round,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "could not claim deliveries; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            for (claim, probe) in claims.claimed {
                let permit = Arc::clone(&outstanding)
                    .try_acquire_owned()
                    .expect("claims never exceed the room counted above");
                self.start(claim, permit, Arc::clone(&sending), stop.clone(), probe);
            }
            if claims.more {
                continue;
            }
            // A held environment's due deliveries must not make the loop
            // spin: it then looks again at the controls' pace.
            let idle = if claims.held {
                REFRESH
            } else {
                self.idle_time().await
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = self.gate.freed() => {}
                _ = tokio::time::sleep(idle) => {}
                _ = stop.changed() => {}
            }
        }
        let _ = from_memory.await;
        let all = u32::try_from(self.concurrency * 2).unwrap_or(u32::MAX);
        let finished = async {
            let _ = outstanding.acquire_many(all).await;
            let _ = handed_room.acquire_many(all).await;
        };
        if tokio::time::timeout(grace, finished).await.is_err() {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "delivery attempts still in flight at shutdown; they will be made again after restart");
        }
    }

    /// Claims what each environment's controls let through, up to `room`
    /// in all.
    async fn claim_round(&self, room: usize) -> Result<Round, StoreError> {
        let mut round = Round::default();
        for env in Environment::ALL {
            let left = room - round.claimed.len();
            let now = Timestamp::now();
            if self.config.credentials(env).is_none() {
                let looked = &self.keyless_looked[env as usize];
                let last = looked.load(Ordering::Relaxed);
                if now.0 - last < POLL.as_millis() as i64 {
                    continue;
                }
                looked.store(now.0, Ordering::Relaxed);
            }
            let (limit, probe) = match self.gate.claims(env, now).await? {
                Claims::None => {
                    round.held = true;
                    continue;
                }
                Claims::Probe => (1, true),
                Claims::Up(n) => (n.min(u32::try_from(left).unwrap_or(u32::MAX)), false),
            };
            if limit == 0 {
                // Its lane is full: the loop waits for an attempt to end.
                round.held = true;
                continue;
            }
            let mut claims = self.store.claim_due(now, self.lease, env, limit).await?;
            // Oldest first: the order attempts are let through (a claim's
            // rows come back in no particular order).
            claims.sort_by_key(|c| (c.received_at, c.id.0));
            round.more |= !probe && claims.len() == limit as usize;
            round.claimed.extend(claims.into_iter().map(|c| (c, probe)));
        }
        Ok(round)
    }

    /// Starts the attempts the receive path hands over in memory (events it
    /// inserted already claimed), each holding a place in `room`. On stop,
    /// what was handed over and not started is given back like any claim.
    async fn take_handed(
        self,
        room: Arc<Semaphore>,
        sending: Arc<Semaphore>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(handed) = self.handed.clone() else {
            return;
        };
        let mut handed = handed.lock().await;
        loop {
            let claim = tokio::select! {
                claim = handed.recv() => claim,
                _ = stop.wait_for(|stopped| *stopped) => None,
            };
            let Some(claim) = claim else { break };
            let permit = tokio::select! {
                permit = Arc::clone(&room).acquire_owned() => permit.ok(),
                _ = stop.wait_for(|stopped| *stopped) => None,
            };
            match permit {
                Some(permit) => {
                    self.start(claim, permit, Arc::clone(&sending), stop.clone(), false)
                }
                None => {
                    self.release(&claim).await;
                    break;
                }
            }
        }
        // No more hand-overs (the receive path's events go to the poller
        // instead); what is queued is given back.
        handed.close();
        while let Some(claim) = handed.recv().await {
            self.release(&claim).await;
        }
    }

    /// One claimed delivery's attempt, on a task of its own: it waits for
    /// its environment's controls to let it through and for a sending slot,
    /// attempts, frees the slot, records the outcome. `probe`: the fleet's
    /// one attempt through an open breaker.
    fn start(
        &self,
        claim: Claimed,
        permit: OwnedSemaphorePermit,
        sending: Arc<Semaphore>,
        stop: watch::Receiver<bool>,
        probe: bool,
    ) {
        let worker = self.clone();
        // Queued here, in the order claims are started; admitted in that order.
        let started = self.gate.started(claim.environment);
        let ticket = self.gate.queue(claim.environment);
        tokio::spawn(async move {
            let _permit = permit;
            let _started = started;
            let mut stopping = stop.clone();
            let admitted = tokio::select! {
                admitted = worker.gate.admit(claim.environment, probe, ticket) => Some(admitted),
                _ = stopping.wait_for(|stopped| *stopped) => None,
            };
            let _in_flight = match admitted {
                Some(Admit::Go(in_flight)) => in_flight,
                Some(Admit::Hold(why)) => {
                    tracing::debug!(delivery_id = %claim.id, environment = %claim.environment, why,
                        "delivery held back unspent");
                    worker.release(&claim).await;
                    return;
                }
                None => {
                    worker.release(&claim).await;
                    return;
                }
            };
            let slot = tokio::select! {
                slot = sending.acquire_owned() => slot.ok(),
                _ = stopping.wait_for(|stopped| *stopped) => None,
            };
            let Some(slot) = slot.filter(|_| !*stop.borrow()) else {
                // Claimed ahead but never started: give it back as it
                // was, so the attempt number counts attempts made.
                worker.release(&claim).await;
                return;
            };
            let (outcome, _, made) = worker.attempt_and_classify(&claim).await;
            drop(slot);
            if let Err(e) = worker.store.finish(&claim, outcome, made).await {
                tracing::error!(error = %e, delivery_id = %claim.id, "could not record a delivery attempt; its lease will expire and it will be tried again");
            }
        });
    }

    async fn release(&self, claim: &Claimed) {
        if let Err(e) = self.store.release(claim, Timestamp::now()).await {
            tracing::warn!(error = %e, delivery_id = %claim.id, "could not give back a delivery claimed but not started; it is tried again when its lease runs out");
        }
    }

    async fn idle_time(&self) -> Duration {
        match self.store.next_due().await {
            Ok(Some(due)) => Timestamp::now()
                .until(due)
                .clamp(Duration::from_millis(1), POLL),
            _ => POLL,
        }
    }

    async fn deliver(&self, claim: Claimed) -> Result<Step, StoreError> {
        let (outcome, step, made) = self.attempt_and_classify(&claim).await;
        self.store.finish(&claim, outcome, made).await?;
        Ok(step)
    }

    /// Makes the attempt, decides what happens next and logs it; the caller records it.
    async fn attempt_and_classify(&self, claim: &Claimed) -> (Outcome, Step, AttemptRecord) {
        let started_at = Timestamp::now();
        let started = Instant::now();
        let answer = self.attempt(claim).await;
        let duration = started.elapsed();
        let breaker_open = self
            .gate
            .record(claim.environment, answer.kind, answer.retry_after)
            .await;
        let latency_ms = duration.as_millis() as u64;
        let made = AttemptRecord {
            started_at,
            duration,
            http_status: answer.status,
            kind: answer.kind,
            message: answer.error.clone(),
        };
        let (outcome, step) = match answer.error {
            None => (
                Outcome::Delivered {
                    at: Timestamp::now(),
                    status: answer.status.unwrap_or(200),
                },
                Step::Delivered,
            ),
            Some(error) if breaker_open => (
                Outcome::Held {
                    at: Timestamp::now(),
                    error,
                },
                Step::Held,
            ),
            Some(error) => match self.schedule.wait_after(claim.schedule_attempt) {
                Some(wait) => (
                    Outcome::Retry {
                        at: Timestamp::now().plus(next_wait(wait, answer.retry_after)),
                        error,
                    },
                    Step::Retried,
                ),
                None => (Outcome::Dead { error }, Step::Dead),
            },
        };
        match &outcome {
            Outcome::Delivered { status, .. } => tracing::info!(
                delivery_id = %claim.id, event_id = %claim.event_id, environment = %claim.environment,
                attempt = claim.attempt, status, latency_ms, outcome = "delivered", "delivery attempt"
            ),
            Outcome::Retry { at, error } => tracing::warn!(
                delivery_id = %claim.id, event_id = %claim.event_id, environment = %claim.environment,
                attempt = claim.attempt, latency_ms, error = %error, kind = made.kind.as_str(),
                next_attempt_at = %at, outcome = "retry", "delivery attempt"
            ),
            Outcome::Held { error, .. } => tracing::warn!(
                delivery_id = %claim.id, event_id = %claim.event_id, environment = %claim.environment,
                attempt = claim.attempt, latency_ms, error = %error, kind = made.kind.as_str(), outcome = "held",
                "delivery attempt; the breaker is open, so it keeps its place in the retry schedule"
            ),
            Outcome::Dead { error } => tracing::error!(
                delivery_id = %claim.id, event_id = %claim.event_id, environment = %claim.environment,
                attempt = claim.attempt, latency_ms, error = %error, kind = made.kind.as_str(), outcome = "dead",
                "delivery attempt; the retry schedule is used up, replay it with the admin API or CLI"
            ),
        }
        if let Some(metrics) = &self.metrics {
            metrics.attempt(claim, &made, &outcome);
        }
        (outcome, step, made)
    }

    async fn attempt(&self, claim: &Claimed) -> Answer {
        if let Some(e) = &claim.unopened {
            return Answer::unopened(e);
        }
        let url = self.config.accelerate_url(claim.environment);
        let mut request = http::Request::post(url.clone());
        for (name, value) in claim.headers.iter() {
            let value = match value {
                Forward::Bytes(value) => value.as_ref(),
                Forward::Key(key) => match self.key_for(claim, key) {
                    Some(key) => key.expose().as_bytes(),
                    None => return Answer::no_key(claim.environment),
                },
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                request = request.header(name, value);
            }
        }
        if let Some(value) = &self.proxy_authorization[claim.environment.index()] {
            request = request.header(PROXY_AUTHORIZATION, value.clone());
        }
        let request = request
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(CONTENT_LENGTH, claim.body.len())
            .header("x-relay-delivery-id", claim.id.to_string())
            .header("x-relay-attempt", claim.attempt.to_string())
            .body(Full::new(claim.body.clone()));
        let request = match request {
            Ok(request) => request,
            Err(e) => return Answer::other(format!("request not built: {e}")),
        };
        // Accelerate's status line decides the attempt; the body after it
        // is read only so the connection can be reused, bounded in size and
        // time, and whatever happens to it changes nothing: a 2xx whose body
        // stalls or breaks off is delivered, never sent again.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Answer::failed(&e),
            Err(_) => {
                return Answer {
                    status: None,
                    kind: AttemptKind::Timeout,
                    error: Some(format!("no answer within {} ms", self.timeout.as_millis())),
                    retry_after: None,
                }
            }
        };
        let status = response.status();
        let retry_after = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| response.headers().get(RETRY_AFTER))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let drain = async {
            let mut body = response.into_body();
            let mut read = 0;
            while read < MAX_ANSWER_BYTES {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                    _ => break,
                }
            }
        };
        let body_deadline = deadline.min(tokio::time::Instant::now() + ANSWER_BODY_WAIT);
        if tokio::time::timeout_at(body_deadline, drain).await.is_err() {
            tracing::debug!(delivery_id = %claim.id, status = status.as_u16(),
                "Accelerate's answer body stalled; the connection is dropped, the status stands");
        }
        Answer {
            status: Some(status.as_u16()),
            kind: AttemptKind::of_status(status.as_u16()),
            error: (!status.is_success()).then(|| format!("Accelerate answered {status}")),
            retry_after,
        }
    }
}

/// What one claim round took: each claim and whether it is the probe.
#[derive(Default)]
struct Round {
    claimed: Vec<(Claimed, bool)>,
    /// An environment had as many due as it was let take: claim again at once.
    more: bool,
    /// An environment was held (paused, broken, full): do not sleep by its due times.
    held: bool,
}

/// The client every attempt goes through; built once per worker.
fn client(config: &Config) -> Result<Client, ClientError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.delivery_timeout));
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &config.accelerate_ca {
        // Checked when the configuration was read.
        roots.add_parsable_certificates(ca.certificates.iter().cloned());
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(Connector::new(http, &config.proxies));
    Ok(
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.delivery_concurrency)
            .build(https),
    )
}

impl Worker {
    /// The Authorization value for a stored key reference: the key the event
    /// arrived with, or (that key since removed) the environment's first key.
    fn key_for(&self, claim: &Claimed, key: &KeyRef) -> Option<&Secret> {
        match self.config.credentials(claim.environment)?.resolve(key) {
            Resolved::Same(key) => Some(key),
            Resolved::Replaced(key) => {
                tracing::warn!(
                    delivery_id = %claim.id, event_id = %claim.event_id, environment = %claim.environment,
                    "the Authorization key this event arrived with is no longer configured \
                     (a rotation finished while it waited): sending the environment's first key"
                );
                Some(key)
            }
        }
    }
}

/// What came of one request to Accelerate. `error` is `None` on a 2xx.
struct Answer {
    status: Option<u16>,
    kind: AttemptKind,
    error: Option<String>,
    retry_after: Option<Duration>,
}

impl Answer {
    /// Nothing sent: the event's environment has no keys configured any more.
    fn no_key(environment: Environment) -> Self {
        let var = environment.authorization_key_var();
        Answer {
            status: None,
            kind: AttemptKind::Other,
            error: Some(format!(
                "not sent: {environment} has no Authorization key configured; set {var} (and its \
                 signature key) and retry the delivery"
            )),
            retry_after: None,
        }
    }

    /// Nothing sent: the stored body or headers did not open (`seal`).
    fn unopened(e: &SealError) -> Self {
        Answer {
            status: None,
            kind: AttemptKind::Other,
            error: Some(format!("not sent: {e}")),
            retry_after: None,
        }
    }

    fn failed(e: &hyper_util::client::legacy::Error) -> Self {
        // hyper's errors never carry the URL (which could hold credentials);
        // their causes say what went wrong (refused, TLS, reset).
        let causes = std::error::Error::source(e)
            .map(|c| format!(": {}", egress::causes(c)))
            .unwrap_or_default();
        if let Some(proxy) = egress::proxy_error(e) {
            return Answer {
                status: None,
                kind: AttemptKind::Proxy,
                error: Some(proxy.to_string()),
                retry_after: None,
            };
        }
        if egress::tls_error(e).is_some() {
            return Answer {
                status: None,
                kind: AttemptKind::Tls,
                error: Some(format!(
                    "TLS with Accelerate failed{causes}; check that the URL's host name is on \
                     Accelerate's certificate and that its CA is trusted (bundled roots, or \
                     RELAY_ACCELERATE_CA_FILE)"
                )),
                retry_after: None,
            };
        }
        if e.is_connect() {
            return Answer {
                status: None,
                kind: AttemptKind::Connect,
                error: Some(format!("could not connect to Accelerate{causes}")),
                retry_after: None,
            };
        }
        Self::other(format!("request failed: {e}{causes}"))
    }

    fn other(error: String) -> Self {
        Answer {
            status: None,
            kind: AttemptKind::Other,
            error: Some(error),
            retry_after: None,
        }
    }
}
