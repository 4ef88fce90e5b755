//! Operators' reads (admin API and console pages) run on threads of their
//! own at a lower CPU priority: the webhook workers never decode or
//! serialise a page of 500 rows, and the kernel hands the CPU to a webhook
//! the moment one arrives. Operators queue; webhooks do not.
//!
//! Niceness alone does not bound them: a lowered thread still takes an idle
//! core, PostgreSQL's backends serve its queries at normal priority, and a
//! SQLite writer commits slower while many snapshots are open. So the reads
//! are also paced: each of the operators' slots rests after a read for
//! `REST_PER_BUSY` times as long as the read took, and a replica spends at
//! most a quarter of its time reading for operators, however many ask.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

/// Niceness of the operators' threads: the kernel gives a runnable webhook
/// worker (niceness 0) about ten times their share of a busy core, and
/// wakes it ahead of them; on an idle core operators get all of it.
const NICENESS: i32 = 10;

/// A slot rests three times as long as its read took (rounded up to the
/// timer's millisecond): one person's lookups wait about a millisecond at
/// most, a crowd of readers gets a quarter of the slots' time between them.
const REST_PER_BUSY: u32 = 3;

/// The relay is stopping: its operators' threads are gone.
#[derive(Debug, thiserror::Error)]
#[error("the relay is shutting down; ask another replica or try again when it is back")]
pub struct Stopped;

pub struct Operators {
    runtime: Option<tokio::runtime::Runtime>,
    /// One slot per operators' thread; a read holds one, and its rest after.
    slots: Arc<Semaphore>,
}

impl Operators {
    /// Half the cores (one at least), as many as the SQLite store's operator
    /// connections. Threads the store starts from them (SQLite's blocking
    /// reads) are lowered too.
    pub fn start() -> std::io::Result<Self> {
        Self::with_threads(std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)))
    }

    fn with_threads(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("operators")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
            slots: Arc::new(Semaphore::new(threads)),
        })
    }

    /// Runs `work` on the operators' threads. When the request that waits
    /// for it goes away (the client hung up), `work` is cancelled.
    pub async fn run<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<Stopped> + Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(Stopped.into());
        };
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Stopped)?;
        let started = Instant::now();
        let mut task = Abort(runtime.spawn(work));
        let done = (&mut task.0).await;
        // The answer goes back now; the slot comes back after its rest.
        let rest = started.elapsed() * REST_PER_BUSY;
        runtime.spawn(async move {
            tokio::time::sleep(rest).await;
            drop(slot);
        });
        match done {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Stopped.into()),
        }
    }
}

impl Drop for Operators {
    /// Dropped on an actix worker at shutdown, where blocking on the
    /// runtime's threads is not allowed.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A task aborted when its waiter is dropped.
struct Abort<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Abort<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Linux keeps a niceness per thread; where it cannot be lowered the
/// operators' threads keep the relay's.
fn lower_priority() {
    let thread = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(thread), NICENESS) {
        tracing::warn!(error = %e, "could not lower the operators' threads' CPU priority");
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Operators, Stopped};

    const READ: Duration = Duration::from_millis(40);

    /// A read that takes `READ`, and when it started.
    async fn read(operators: &Operators, since: Instant) -> Duration {
        operators
            .run(async move {
                let started = since.elapsed();
                tokio::time::sleep(READ).await;
                Ok::<_, Stopped>(started)
            })
            .await
            .expect("read")
    }

    /// A crowd gets a quarter of a slot's time; each answer still comes
    /// back the moment its read is done.
    #[tokio::test]
    async fn reads_rest_three_times_as_long_as_they_took() {
        let operators = Operators::with_threads(1).expect("operators");
        let since = Instant::now();
        let answered = read(&operators, since).await;
        assert!(
            since.elapsed() < READ * 2,
            "the first answer waited {:?}",
            since.elapsed()
        );
        let (second, third) = tokio::join!(read(&operators, since), read(&operators, since));
        let mut starts = [answered, second, third];
        starts.sort();
        for pair in starts.windows(2) {
            // READ busy, then 3 × READ resting (a little slack for timers).
            assert!(
                pair[1] - pair[0] >= READ * 4 - Duration::from_millis(5),
                "reads started at {starts:?}"
            );
        }
    }
}
