//! Delivery control: whether, and how fast, an environment's attempts may
//! go to Accelerate. An operator's pause, the breaker, Accelerate's
//! `Retry-After` and the pace are kept by the store for the whole fleet
//! (`store::controls`); this is each replica's side of them.
//!
//! Every attempt passes `Gate::admit` just before it is sent, whatever made
//! it (a first attempt, a retry, an operator's retry or replay), so nothing
//! goes around a limit. Each environment's pacer serves attempts in the
//! order they were queued (`Gate::queue`, oldest claim first): a place
//! among the attempts in flight, then a slot of the pace. Slots are `1 /
//! rate` apart from the store's one counter, taken a few at a time, and an
//! attempt is sent at its slot's time: two replicas together keep to the rate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::event::Environment;
use crate::fence::Fence;
use crate::metrics::Metrics;
use crate::store::{AttemptKind, Control, Store, StoreError, Timestamp};

/// How often each replica reads the fleet's controls: a pause or a breaker
/// another replica opened is obeyed within this.
pub const REFRESH: Duration = Duration::from_millis(250);
/// Most of a second's slots one replica takes at once: a tenth, so a
/// replica with little to send wastes little of the fleet's rate.
const SLOTS_AT_ONCE: f64 = 0.1;
/// A slot not used within this of its time is dropped, not sent late in a
/// burst with the next ones.
const SLOT_GRACE: Duration = Duration::from_millis(20);
/// How far ahead of its pace a lane claims: two seconds of attempts.
const AHEAD: f64 = 2.0;

/// What an attempt may do now.
pub enum Admit {
    /// Send it; the permit is its place among the environment's attempts
    /// in flight.
    Go(OwnedSemaphorePermit),
    /// Give it back unspent: the environment is paused, held by
    /// Accelerate's `Retry-After`, or its breaker is open.
    Hold(&'static str),
}

/// What the claim loop may take of an environment now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claims {
    None,
    /// The fleet's one probe while the breaker is open: one delivery.
    Probe,
    Up(u32),
}

/// An environment's controls as this replica last read or set them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub paused: bool,
    pub breaker_open: bool,
    pub held_until: Option<Timestamp>,
    pub failures: u32,
}

impl State {
    fn flowing(&self, now: Timestamp) -> bool {
        !self.paused && !self.breaker_open && self.held_until.is_none_or(|t| t <= now)
    }
}

impl From<&Control> for State {
    fn from(c: &Control) -> Self {
        State {
            paused: c.paused_at.is_some(),
            breaker_open: c.breaker_opened_at.is_some(),
            held_until: c.held_until,
            failures: c.failures,
        }
    }
}

/// An attempt's place in its environment's queue (see `Gate::queue`).
pub enum Ticket {
    /// Unpaced, with room and nobody ahead: its place in flight at once,
    /// without a hand-off through the pacer (a context switch per attempt).
    Ready(OwnedSemaphorePermit),
    Queued(oneshot::Receiver<OwnedSemaphorePermit>),
}

struct Lane {
    state: RwLock<State>,
    /// Attempts waiting for their place, in the order they were queued.
    queue: mpsc::UnboundedSender<oneshot::Sender<OwnedSemaphorePermit>>,
    /// Sent to the pacer and not yet served or skipped by it.
    queued: AtomicUsize,
    in_flight: Arc<Semaphore>,
    /// Attempts started (claimed or handed over) and not yet recorded.
    outstanding: AtomicUsize,
    /// The claim loop found this lane full and waits for an attempt to end
    /// (only then does an ending attempt wake it).
    full: AtomicBool,
}

pub struct Gate {
    store: Store,
    /// Attempts per second per environment; `None`: unlimited.
    rate: Option<u32>,
    cap: usize,
    failures_to_open: u32,
    probe_every: Duration,
    lanes: [Lane; 2],
    metrics: Option<Arc<Metrics>>,
    /// Notified when an attempt ends, so a claim loop waiting on a full
    /// lane looks again.
    freed: Notify,
    /// Closed when a newer release migrated the database: nothing goes.
    fence: Arc<Fence>,
}

impl Gate {
    /// Starts each environment's pacer (they end when the gate is dropped).
    pub fn new(config: &Config, store: Store, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        let cap = config.environment_concurrency;
        let (sandbox, sandbox_queue) = mpsc::unbounded_channel();
        let (production, production_queue) = mpsc::unbounded_channel();
        let lane = |queue| Lane {
            state: RwLock::new(State::default()),
            queue,
            queued: AtomicUsize::new(0),
            in_flight: Arc::new(Semaphore::new(cap)),
            outstanding: AtomicUsize::new(0),
            full: AtomicBool::new(false),
        };
        let gate = Arc::new(Self {
            store,
            rate: config.delivery_rate,
            cap,
            failures_to_open: config.breaker_failures,
            probe_every: config.breaker_probe_interval,
            lanes: [lane(sandbox), lane(production)],
            metrics,
            freed: Notify::new(),
            fence: Arc::default(),
        });
        for (env, queue) in Environment::ALL
            .into_iter()
            .zip([sandbox_queue, production_queue])
        {
            tokio::spawn(pacer(Arc::downgrade(&gate), env, queue));
        }
        gate
    }

    fn lane(&self, env: Environment) -> &Lane {
        &self.lanes[env as usize]
    }

    pub fn state(&self, env: Environment) -> State {
        *self
            .lane(env)
            .state
            .read()
            .expect("never poisoned: no panic under it")
    }

    fn set(&self, env: Environment, change: impl FnOnce(&mut State)) {
        let state = {
            let mut state = self.lane(env).state.write().expect("never poisoned");
            change(&mut state);
            *state
        };
        if let Some(metrics) = &self.metrics {
            metrics.control(env, state.paused, state.breaker_open);
        }
    }

    /// The upgrade fence every claim, hand-over and attempt here obeys.
    pub fn fence(&self) -> &Arc<Fence> {
        &self.fence
    }

    pub fn rate(&self) -> Option<u32> {
        self.rate
    }

    /// Attempts of `env` this replica has started and not yet recorded.
    pub fn in_flight(&self, env: Environment) -> usize {
        self.cap - self.lane(env).in_flight.available_permits()
    }

    /// Reads the fleet's controls into this replica's state.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let controls = self.store.controls().await?;
        for env in Environment::ALL {
            let read = controls
                .iter()
                .find(|(e, _)| *e == env)
                .map(|(_, c)| State::from(c))
                .unwrap_or_default();
            let before = self.state(env);
            if before.breaker_open != read.breaker_open {
                tracing::info!(environment = %env, open = read.breaker_open,
                    "breaker changed on another replica");
            }
            self.set(env, |state| *state = read);
        }
        Ok(())
    }

    /// Refreshes every `REFRESH` until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "could not read the delivery controls; keeping the last ones read");
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Whether the receive path may hand `env`'s new event straight to the
    /// worker (else it waits in the store for a claim).
    pub fn takes_handover(&self, env: Environment) -> bool {
        !self.fence.closed()
            && self.state(env).flowing(Timestamp::now())
            && self.lane(env).outstanding.load(Ordering::Relaxed) < self.ahead()
    }

    fn batch(&self) -> usize {
        (self.ahead() / 4).max(1)
    }

    fn ahead(&self) -> usize {
        let by_rate = self
            .rate
            .map_or(usize::MAX, |r| (f64::from(r) * AHEAD).ceil() as usize);
        (self.cap * 2).min(by_rate).max(1)
    }

    /// How many of `env`'s due deliveries the claim loop may take now.
    pub async fn claims(&self, env: Environment, now: Timestamp) -> Result<Claims, StoreError> {
        let state = self.state(env);
        if self.fence.closed() || state.paused || state.held_until.is_some_and(|t| t > now) {
            return Ok(Claims::None);
        }
        if state.breaker_open {
            let won = self.store.take_probe(env, now, self.probe_every).await?;
            return Ok(if won { Claims::Probe } else { Claims::None });
        }
        let lane = self.lane(env);
        // Marked full before the count is read: an attempt that ends after
        // the read then finds the mark and wakes the loop (set after it,
        // the last attempt's end could pass unseen until the next poll).
        lane.full.store(true, Ordering::SeqCst);
        let outstanding = lane.outstanding.load(Ordering::SeqCst);
        let mut room = self.ahead().saturating_sub(outstanding);
        // With work in progress, claims wait for a batch's worth of room:
        // one claim per ended attempt would be a statement each.
        if outstanding > 0 && room < self.batch() {
            room = 0;
        } else {
            lane.full.store(false, Ordering::SeqCst);
        }
        Ok(Claims::Up(u32::try_from(room).unwrap_or(u32::MAX)))
    }

    /// Resolves when a lane found full has a batch's worth of room again.
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    /// Marks one attempt of `env` started; the guard marks it recorded.
    pub fn started(self: &Arc<Self>, env: Environment) -> Started {
        self.lane(env).outstanding.fetch_add(1, Ordering::Relaxed);
        Started(Arc::clone(self), env)
    }

    /// Queues an attempt of `env`: attempts are let through in the order
    /// they were queued. Called where claims are taken in order (not on
    /// the attempts' own tasks, which start in any order).
    pub fn queue(&self, env: Environment) -> Ticket {
        let lane = self.lane(env);
        if self.rate.is_none() && lane.queued.load(Ordering::Acquire) == 0 {
            if let Ok(permit) = Arc::clone(&lane.in_flight).try_acquire_owned() {
                return Ticket::Ready(permit);
            }
        }
        let (place, ticket) = oneshot::channel();
        lane.queued.fetch_add(1, Ordering::AcqRel);
        // The pacer ends only with the gate, which outlives this call.
        let _ = lane.queue.send(place);
        Ticket::Queued(ticket)
    }

    /// Waits for the attempt's turn: a place among `env`'s attempts in
    /// flight, then its slot of the pace. A probe passes an open breaker.
    /// Dropping the ticket unserved gives its place to the next one.
    pub async fn admit(&self, env: Environment, probe: bool, ticket: Ticket) -> Admit {
        if let Some(why) = self.holds(env, probe) {
            return Admit::Hold(why);
        }
        let permit = match ticket {
            Ticket::Ready(permit) => permit,
            Ticket::Queued(ticket) => match ticket.await {
                Ok(permit) => permit,
                Err(_) => return Admit::Hold("stopping"),
            },
        };
        // A pause may have come while this waited.
        match self.holds(env, probe) {
            Some(why) => Admit::Hold(why),
            None => Admit::Go(permit),
        }
    }

    fn holds(&self, env: Environment, probe: bool) -> Option<&'static str> {
        let state = self.state(env);
        if self.fence.closed() {
            Some("schema_newer")
        } else if state.paused {
            Some("paused")
        } else if state.held_until.is_some_and(|t| t > Timestamp::now()) {
            Some("retry_after")
        } else if state.breaker_open && !probe {
            Some("breaker_open")
        } else {
            None
        }
    }

    /// The next slot of the fleet's pace from `slots`, taking more from the
    /// store (as many as `waiting` need, up to a tenth of a second's) when
    /// none is left. Slots whose time has passed are dropped, never sent
    /// in a burst. The store not answering, the replica paces alone.
    async fn slot(
        &self,
        env: Environment,
        rate: u32,
        slots: &mut VecDeque<i64>,
        waiting: usize,
    ) -> i64 {
        let every = Duration::from_secs(1) / rate;
        let step = i64::try_from(every.as_micros()).unwrap_or(i64::MAX);
        let grace = i64::try_from(SLOT_GRACE.as_micros()).unwrap_or(i64::MAX);
        let now = now_us();
        while slots.front().is_some_and(|s| *s + grace < now) {
            slots.pop_front();
        }
        if let Some(slot) = slots.pop_front() {
            return slot;
        }
        let most = ((f64::from(rate) * SLOTS_AT_ONCE).ceil() as usize).max(1);
        let take = u32::try_from(waiting.clamp(1, most)).unwrap_or(1);
        match self.store.pace(env, now, take, every).await {
            Ok(first) => {
                slots.extend((1..i64::from(take)).map(|k| first + k * step));
                first
            }
            Err(e) => {
                tracing::warn!(error = %e, environment = %env, "could not take slots of the fleet's delivery rate; this replica keeps to the rate alone meanwhile");
                now + step
            }
        }
    }

    /// Counts an attempt's result toward the breaker and honours
    /// Accelerate's `Retry-After`; answers whether the breaker is open once
    /// it is counted (the attempt's failure then spends no place in the
    /// retry schedule).
    pub async fn record(
        &self,
        env: Environment,
        kind: AttemptKind,
        retry_after: Option<Duration>,
    ) -> bool {
        let now = Timestamp::now();
        if let Some(wait) = retry_after {
            let until = now.plus(wait);
            self.set(env, |s| s.held_until = s.held_until.max(Some(until)));
            if let Err(e) = self.store.hold(env, until).await {
                tracing::warn!(error = %e, environment = %env, "could not share Accelerate's Retry-After with the fleet; this replica holds back alone");
            }
        }
        match breaker_counts(kind) {
            Some(true) => match self
                .store
                .count_failure(env, now, self.failures_to_open, self.probe_every)
                .await
            {
                Ok(opened) => {
                    let was = self.state(env).breaker_open;
                    self.set(env, |s| {
                        s.failures = s.failures.saturating_add(1);
                        s.breaker_open = opened.is_some();
                    });
                    if opened.is_some() && !was {
                        tracing::error!(environment = %env, failures = self.failures_to_open,
                            probe_every_s = self.probe_every.as_secs_f64(),
                            "breaker open: Accelerate failed too many attempts in a row; \
                             pending deliveries wait (nothing turns dead) and one probe goes \
                             out each interval until one succeeds");
                    }
                    opened.is_some()
                }
                Err(e) => {
                    tracing::warn!(error = %e, environment = %env, "could not count a failed attempt toward the breaker");
                    self.state(env).breaker_open
                }
            },
            Some(false) => {
                let state = self.state(env);
                if state.failures > 0 || state.breaker_open {
                    match self.store.count_answered(env).await {
                        Ok(_) => {
                            self.set(env, |s| {
                                s.failures = 0;
                                s.breaker_open = false;
                            });
                            if state.breaker_open {
                                tracing::info!(environment = %env, "breaker closed: Accelerate answered; the backlog drains at the paced rate");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, environment = %env, "could not reset the breaker's count")
                        }
                    }
                }
                false
            }
            None => self.state(env).breaker_open,
        }
    }

    /// An operator's pause or resume, obeyed here at once (the other
    /// replicas within `REFRESH`). `true` when it changed something.
    pub async fn pause(
        &self,
        env: Environment,
        paused: bool,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let changed = if paused {
            self.store.pause(env, Timestamp::now(), actor).await?
        } else {
            self.store.resume(env).await?
        };
        self.set(env, |s| s.paused = paused);
        Ok(changed)
    }
}

/// Serves `env`'s queue in order: a place among the attempts in flight,
/// then (with a rate) a slot of the pace, then the attempt goes. A place
/// whose attempt stopped waiting goes to the next one.
async fn pacer(
    gate: Weak<Gate>,
    env: Environment,
    mut queue: mpsc::UnboundedReceiver<oneshot::Sender<OwnedSemaphorePermit>>,
) {
    let mut slots = VecDeque::new();
    let mut next_slot: Option<i64> = None;
    while let Some(mut place) = queue.recv().await {
        let Some(gate) = gate.upgrade() else { return };
        let _served = Served(&gate.lane(env).queued);
        let in_flight = Arc::clone(&gate.lane(env).in_flight);
        let permit = tokio::select! {
            permit = in_flight.acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = place.closed() => continue,
        };
        if let Some(rate) = gate.rate {
            let slot = match next_slot.take() {
                Some(slot) => slot,
                None => gate.slot(env, rate, &mut slots, queue.len() + 1).await,
            };
            let wait = slot - now_us();
            if wait > 0 {
                if let Some(metrics) = &gate.metrics {
                    metrics.paced(env);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_micros(wait.unsigned_abs())) => {}
                    // Gone while it waited: its slot is the next one's.
                    _ = place.closed() => {
                        next_slot = Some(slot);
                        continue;
                    }
                }
            }
        }
        // Unsent when the attempt stopped waiting: the permit goes back.
        let _ = place.send(permit);
    }
}

/// Counts a queued attempt off once the pacer is done with it, whichever way.
struct Served<'a>(&'a AtomicUsize);

impl Drop for Served<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One attempt started and not yet recorded (see `Gate::started`).
pub struct Started(Arc<Gate>, Environment);

impl Drop for Started {
    fn drop(&mut self) {
        let gate = &self.0;
        let lane = gate.lane(self.1);
        let outstanding = lane.outstanding.fetch_sub(1, Ordering::SeqCst) - 1;
        let room = gate.ahead().saturating_sub(outstanding);
        if (room >= gate.batch() || outstanding == 0) && lane.full.swap(false, Ordering::SeqCst) {
            gate.freed.notify_one();
        }
    }
}

/// `Some(true)`: a failure of Accelerate's (timeouts, connections, TLS,
/// the proxy, 5xx, 429) that counts toward the breaker; `Some(false)`:
/// Accelerate answered (2xx, 3xx, other 4xx: the event's fault, not the
/// service's), which starts the count again; `None`: not sent.
fn breaker_counts(kind: AttemptKind) -> Option<bool> {
    match kind {
        AttemptKind::Http5xx
        | AttemptKind::Http429
        | AttemptKind::Timeout
        | AttemptKind::Connect
        | AttemptKind::Tls
        | AttemptKind::Proxy => Some(true),
        AttemptKind::Delivered | AttemptKind::Http3xx | AttemptKind::Http4xx => Some(false),
        AttemptKind::Other => None,
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
