//! Operators' reads (admin API and console pages) run on threads of their
//! own at a lower CPU priority: the webhook workers never decode or
//! serialise a page of 500 rows, and the kernel hands the CPU to a webhook
//! the moment one arrives. Operators queue; webhooks do not.

use std::future::Future;

/// Niceness of the operators' threads: the kernel gives a runnable webhook
/// worker (niceness 0) about ten times their share of a busy core, and
/// wakes it ahead of them; on an idle core operators get all of it.
const NICENESS: i32 = 10;

/// The relay is stopping: its operators' threads are gone.
#[derive(Debug, thiserror::Error)]
#[error("the relay is shutting down; ask another replica or try again when it is back")]
pub struct Stopped;

pub struct Operators {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Operators {
    /// Half the cores (one at least), as many as the SQLite store's operator
    /// connections. Threads the store starts from them (SQLite's blocking
    /// reads) are lowered too.
    pub fn start() -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("operators")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
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
        let mut task = Abort(runtime.spawn(work));
        match (&mut task.0).await {
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
