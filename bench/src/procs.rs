//! The processes under test (the relay's release binary, nginx) and what the
//! kernel says about them: CPU time, peak RSS, device flushes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::load::{get_ok, AUTH, SIG_KEY};

/// The relay's threads, grouped by what they do.
#[derive(Clone, Copy)]
pub enum ThreadGroup {
    /// actix's HTTP workers: receive, verify, parse, the commit's wait.
    Http,
    /// The tokio runtime: delivery attempts (and, on PostgreSQL, sqlx's I/O).
    Runtime,
    /// SQLite's writer thread: every commit.
    Writer,
    /// SQLite's checkpointer: the WAL copied into the database file.
    Checkpointer,
    Other,
}

impl ThreadGroup {
    pub const COUNT: usize = 5;
    pub const ALL: [ThreadGroup; Self::COUNT] = [
        ThreadGroup::Http,
        ThreadGroup::Runtime,
        ThreadGroup::Writer,
        ThreadGroup::Checkpointer,
        ThreadGroup::Other,
    ];

    /// Thread names as the kernel keeps them (cut to 15 bytes).
    fn of(name: &str) -> Self {
        match name {
            n if n.starts_with("actix-server wo") => ThreadGroup::Http,
            n if n.starts_with("tokio-runtime") || n.starts_with("tokio-rt") => {
                ThreadGroup::Runtime
            }
            "sqlite-writer" => ThreadGroup::Writer,
            n if n.starts_with("sqlite-checkpoi") => ThreadGroup::Checkpointer,
            _ => ThreadGroup::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ThreadGroup::Http => "HTTP workers",
            ThreadGroup::Runtime => "tokio runtime",
            ThreadGroup::Writer => "SQLite writer",
            ThreadGroup::Checkpointer => "SQLite checkpointer",
            ThreadGroup::Other => "other threads",
        }
    }
}

/// What `Proc::threads` read.
#[derive(Default, Clone, Copy)]
pub struct Threads {
    /// CPU ticks (user + system) by `ThreadGroup`.
    pub ticks: [u64; ThreadGroup::COUNT],
    pub switches: u64,
    /// Bytes and calls of `write`-like system calls (`/proc/<pid>/io`'s
    /// `wchar`, `syscw`): the store's pages, the log lines, and the POST to
    /// Accelerate (hyper writes it with `writev`; actix answers with `send`,
    /// which is not counted).
    pub written: u64,
    pub write_calls: u64,
}

impl Threads {
    /// Seconds of CPU by `ThreadGroup` since `before`.
    pub fn cpu_seconds_since(&self, before: &Threads) -> [f64; ThreadGroup::COUNT] {
        std::array::from_fn(|g| {
            self.ticks[g].saturating_sub(before.ticks[g]) as f64 / ticks_per_second()
        })
    }
}

pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// user + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// CPU ticks and context switches so far of each of the process's
    /// threads, by thread name: which thread an event's CPU goes to, and how
    /// often a thread gives the core away (on one core, every hand-off of an
    /// event from one thread to another costs at least one switch).
    pub fn threads(&self) -> Threads {
        let mut threads = Threads::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return threads;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            let switches = field(&status, "voluntary_ctxt_switches:")
                + field(&status, "nonvoluntary_ctxt_switches:");
            let ticks = stat_ticks_at(&path.join("stat"));
            let group = ThreadGroup::of(name.trim());
            threads.ticks[group as usize] += ticks;
            threads.switches += switches;
        }
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.pid())).unwrap_or_default();
        threads.written = field(&io, "wchar:");
        threads.write_calls = field(&io, "syscw:");
        threads
    }

    /// Peak resident set size (VmHWM) in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        status_kib(self.pid(), "VmHWM:") as f64 / 1024.0
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn wait_ready(addr: SocketAddr, path: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if get_ok(addr, path).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{what} did not come up on {addr}")
}

async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the relay did not come up on {addr}")
}

static RELAY_BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
/// The CPU servers under test are started on (pinned mode).
static SERVER_CPU: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Pinned mode: this process (load generator and mocks) on `bench`, every
/// server under test on `server`, nginx with one worker process.
pub fn pin(bench: usize, server: usize) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &bench.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("taskset (util-linux) pins the benchmark")?;
    anyhow::ensure!(
        status.success(),
        "taskset could not pin the benchmark to CPU {bench}"
    );
    let _ = SERVER_CPU.set(server);
    Ok(())
}

/// `program`, started on the server CPU in pinned mode (taskset execs it,
/// so the child's pid is the program's).
fn server_command(program: &Path) -> Command {
    match SERVER_CPU.get() {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpu.to_string()).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// CPU seconds of every PostgreSQL server process (the database's share of
/// an event, beside the relay's own).
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let ticks: u64 = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(stat_ticks)
        .sum();
    ticks as f64 / ticks_per_second()
}

/// Measures another build (CI's smoke run uses the debug build it already has).
pub fn set_relay_binary(path: PathBuf) {
    let _ = RELAY_BINARY.set(path);
}

pub fn relay_binary() -> anyhow::Result<PathBuf> {
    let path = RELAY_BINARY.get().cloned().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/accelerate-relay")
    });
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --release` first (bench/run.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// The relay's release build on `database_url`, forwarding sandbox events to `accelerate`.
pub async fn start_relay(database_url: &str, accelerate: &str, log: &Path) -> anyhow::Result<Proc> {
    start_relay_with(database_url, accelerate, log, &[]).await
}

/// As `start_relay`, with more variables (`RELAY_ACCELERATE_CA_FILE`).
pub async fn start_relay_with(
    database_url: &str,
    accelerate: &str,
    log: &Path,
    extra: &[(&str, &str)],
) -> anyhow::Result<Proc> {
    let addr = free_addr()?;
    let log = std::fs::File::create(log)?;
    let mut command = server_command(&relay_binary()?);
    command.env_clear();
    // RUST_LOG passes through, to measure what logging costs, and
    // RELAY_STORE_KEY, what sealing at rest costs.
    for var in ["RUST_LOG", "RELAY_STORE_KEY"] {
        if let Ok(value) = std::env::var(var) {
            command.env(var, value);
        }
    }
    let child = command
        .env("RELAY_LISTEN", addr.to_string())
        .env("RELAY_DATABASE_URL", database_url)
        .env("CKO_SANDBOX_AUTHORIZATION_KEY", AUTH)
        .env("CKO_SANDBOX_SIGNATURE_KEY", SIG_KEY)
        .env("ACCELERATE_SANDBOX_URL", accelerate)
        // The relay's capacity is measured unpaced; the drain run measures
        // the pace itself (`--drain`). Earlier releases ignore it.
        .env("RELAY_DELIVERY_RATE", "unlimited")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start the relay")?;
    let relay = Proc { child, addr };
    if extra.iter().any(|(k, _)| *k == "RELAY_TLS_CERT") {
        // HTTPS only: listening is ready enough (the store opens before).
        wait_listening(addr).await?;
    } else {
        wait_ready(addr, "/readyz", "the relay").await?;
    }
    Ok(relay)
}

/// nginx with `/ok` answering 200 itself and `/proxy` passing to `upstream`.
pub async fn start_nginx(dir: &Path, upstream: SocketAddr) -> anyhow::Result<Proc> {
    let addr = free_addr()?;
    for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let d = dir.display();
    let workers = if SERVER_CPU.get().is_some() { 1 } else { 2 };
    let conf = format!(
        "worker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         keepalive_requests 10000000;\n client_body_buffer_size 64k;\n\
         upstream accelerate {{ server {upstream}; keepalive 64; keepalive_requests 10000000; }}\n\
         server {{\n  listen {addr};\n\
           location = /ok {{ return 200 '{{\"status\":\"ok\"}}'; }}\n\
           location = /proxy {{ proxy_pass http://accelerate/webhooks/checkoutdotcom; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n\
         }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = server_command(Path::new("nginx"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start nginx (apt-get install nginx; bench/run.sh does)")?;
    let nginx = Proc { child, addr };
    wait_ready(addr, "/ok", "nginx").await?;
    Ok(nginx)
}

/// CPU seconds of `pid` and its children (nginx's workers are children).
pub fn cpu_seconds(pid: u32) -> f64 {
    let own = stat_ticks(pid);
    let children: u64 = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .map(stat_ticks)
        .sum();
    (own + children) as f64 / ticks_per_second()
}

fn stat_ticks(pid: u32) -> u64 {
    stat_ticks_at(Path::new(&format!("/proc/{pid}/stat")))
}

fn stat_ticks_at(path: &Path) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12) // utime, stime (fields 14 and 15 of the whole line)
}

fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    field(&status, key)
}

/// The number after `key` in a `/proc` file of `key: value` lines
/// (`status`, `io`); 0 when it is not there.
fn field(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Cache flushes completed by the machine's disks (field 16 of
/// /sys/block/*/stat): each fsync of the store ends in one.
pub fn disk_flushes() -> u64 {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            !name.starts_with("loop") && !name.starts_with("zram") && !name.starts_with("ram")
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| s.split_whitespace().nth(15)?.parse::<u64>().ok())
        .sum()
}

/// Writes back what earlier phases left dirty, so a phase's fsyncs do not
/// queue behind another phase's files (`sync` is in coreutils).
pub fn settle_disk() {
    let _ = Command::new("sync").status();
}
