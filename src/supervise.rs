//! Background tasks that must not die quietly: the delivery worker and
//! retention here, the SQLite writer and checkpointer threads in `store`.
//!
//! A task that panics or returns before the relay stops is logged at error
//! and started again with backoff, and `/readyz` answers 503 while it is down,
//! so an orchestrator stops sending webhooks to a relay that cannot deliver.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// First wait before a restart; doubles on each quick failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A task that ran this long before failing starts over from the first backoff.
const STABLE: Duration = Duration::from_secs(60);

/// The names of the tasks that are down right now.
#[derive(Clone, Default)]
pub struct Health {
    down: Arc<Mutex<BTreeSet<&'static str>>>,
}

impl Health {
    pub fn down(&self) -> Vec<&'static str> {
        self.lock().iter().copied().collect()
    }

    fn set(&self, task: &'static str, up: bool) {
        if up {
            self.lock().remove(task);
        } else {
            self.lock().insert(task);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<&'static str>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs `make()` until `stop` turns true, starting it again whenever it
/// panics or returns early.
pub fn supervise<F, Fut>(
    task: &'static str,
    health: Health,
    mut stop: watch::Receiver<bool>,
    make: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            let ended = tokio::spawn(make()).await;
            if *stop.borrow() {
                return;
            }
            let wait = backoff.next(started.elapsed());
            match ended {
                Err(e) if e.is_panic() => tracing::error!(
                    task, panic = %panic_text(e.into_panic().as_ref()), restart_in_ms = wait.as_millis() as u64,
                    "background task panicked; restarting it. /readyz answers 503 until it runs again"
                ),
                _ => tracing::error!(
                    task, restart_in_ms = wait.as_millis() as u64,
                    "background task stopped unexpectedly; restarting it. /readyz answers 503 until it runs again"
                ),
            }
            health.set(task, false);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            health.set(task, true);
        }
    })
}

/// The same for a plain thread (the SQLite writer and checkpointer own a
/// blocking connection). `body` returns when its work is done; a panic in it
/// is caught, logged, and `body` is called again after the backoff. `up` is
/// false while it waits to be restarted.
pub fn supervise_thread(task: &'static str, up: &AtomicBool, mut body: impl FnMut()) {
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        match std::panic::catch_unwind(AssertUnwindSafe(&mut body)) {
            Ok(()) => return,
            Err(panic) => {
                let wait = backoff.next(started.elapsed());
                tracing::error!(
                    task, panic = %panic_text(panic.as_ref()), restart_in_ms = wait.as_millis() as u64,
                    "background thread panicked; restarting it. /readyz answers 503 until it runs again"
                );
                up.store(false, Ordering::Relaxed);
                std::thread::sleep(wait);
                up.store(true, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Default)]
struct Backoff(Option<Duration>);

impl Backoff {
    fn next(&mut self, ran_for: Duration) -> Duration {
        let wait = match self.0 {
            Some(last) if ran_for < STABLE => (last * 2).min(MAX_BACKOFF),
            _ => FIRST_BACKOFF,
        };
        self.0 = Some(wait);
        wait
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_panicking_thread_is_restarted_until_it_ends_by_itself() {
        let up = AtomicBool::new(true);
        let runs = AtomicUsize::new(0);
        supervise_thread("test", &up, || {
            if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                panic!("deliberate panic");
            }
        });
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(up.load(Ordering::SeqCst), "up again once restarted");
    }

    #[test]
    fn backoff_doubles_on_quick_failures_and_resets_after_a_stable_run() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(1);
        assert_eq!(b.next(quick), FIRST_BACKOFF);
        assert_eq!(b.next(quick), FIRST_BACKOFF * 2);
        assert_eq!(b.next(quick), FIRST_BACKOFF * 4);
        assert_eq!(b.next(STABLE), FIRST_BACKOFF);
        for _ in 0..20 {
            b.next(quick);
        }
        assert_eq!(b.next(quick), MAX_BACKOFF);
    }
}
