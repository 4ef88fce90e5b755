//! The built binary as a separate process, so tests can `kill -9` it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{eventually, SANDBOX_AUTH, SANDBOX_SIG};

pub const BINARY: &str = env!("CARGO_BIN_EXE_accelerate-relay");

pub struct RelayProcess {
    pub child: Child,
    pub address: String,
}

/// A loopback port held by a socket that is bound but does not listen, so a
/// connection to it is refused, as to a server that is down, and no other test
/// is handed the port in the meantime. (A port from `free_port` that stays
/// unbound for a while can be taken by a test running beside: once, in CI, a
/// second relay listened there and accepted events meant for Accelerate.)
pub struct ClosedPort(socket2::Socket);

impl ClosedPort {
    pub fn new() -> Self {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
        socket.bind(&any.into()).expect("bind a loopback port");
        Self(socket)
    }

    pub fn port(&self) -> u16 {
        self.0
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("bound address")
            .port()
    }

    /// The server comes up: the same socket starts listening on the port.
    pub fn listen(self) -> std::net::TcpListener {
        self.0.listen(1024).expect("listen");
        self.0.into()
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// A free port on loopback (bound, then released for the relay to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl RelayProcess {
    /// Starts the relay on `db` with sandbox on, forwarding to `accelerate_url`,
    /// and waits until it answers `/healthz`.
    /// A `RELAY_LISTEN` in `extra` is where it listens (and is probed).
    pub async fn start(dir: &Path, accelerate_url: &str, extra: &[(&str, &str)]) -> Self {
        let mut vars: Vec<(String, String)> = [
            (
                "RELAY_DATABASE_URL",
                format!("sqlite://{}", db_path(dir).display()),
            ),
            ("CKO_SANDBOX_AUTHORIZATION_KEY", SANDBOX_AUTH.to_owned()),
            ("CKO_SANDBOX_SIGNATURE_KEY", SANDBOX_SIG.to_owned()),
            ("ACCELERATE_SANDBOX_URL", accelerate_url.to_owned()),
            ("RELAY_RETRY_SCHEDULE", ["100ms"; 10].join(",")),
            ("RELAY_DELIVERY_TIMEOUT_MS", "5000".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Self::start_binary(Path::new(BINARY), &dir.join("relay.log"), &vars).await
    }

    /// `binary` (this build's or another release's) with exactly `vars`
    /// (later ones win) and `PATH`, appending to `log`, once it answers
    /// `/healthz`. Without a `RELAY_LISTEN` of a fixed port it gets a free one.
    pub async fn start_binary(binary: &Path, log: &Path, vars: &[(String, String)]) -> Self {
        let listen = vars
            .iter()
            .rev()
            .find(|(k, _)| k == "RELAY_LISTEN")
            .map(|(_, v)| v.clone())
            .filter(|v| !v.ends_with(":0"))
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .env("RELAY_LISTEN", &listen)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file);
        let child = command.spawn().expect("start the relay binary");
        let relay = RelayProcess {
            child,
            address: format!("http://{listen}"),
        };
        let client = reqwest::Client::new();
        let url = format!("{}/healthz", relay.address);
        let up = eventually(Duration::from_secs(20), || async {
            client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(
            up,
            "{} did not come up; see {}",
            binary.display(),
            log.display()
        );
        relay
    }

    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Waits for the process to exit by itself.
    pub async fn exit_status(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("relay.db")
}

/// Status of each delivery on disk, read with a connection of the test's own.
pub async fn statuses(dir: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(db_path(dir)).expect("open the relay's database");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    let mut stmt = conn
        .prepare("SELECT event_id, status FROM deliveries ORDER BY id")
        .expect("prepare");
    let rows = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("read deliveries");
    rows.map(|r| r.expect("row")).collect()
}

/// The binary's command line on the SQLite store in `dir`, as an operator
/// runs it beside the relay: whether it succeeded, its stdout and stderr.
pub fn operator_command(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BINARY)
        .args(args)
        .env_clear()
        .env(
            "RELAY_DATABASE_URL",
            format!("sqlite://{}", db_path(dir).display()),
        )
        .output()
        .expect("run the binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
