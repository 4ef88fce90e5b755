//! The command line: `serve` (the default), `check-config`, `sign`, `replay`,
//! `deliveries`, `environments` and `healthcheck`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::config::{Config, DatabaseConfig};
use crate::event::Environment;
use crate::operations::{self, Caller, Operations};
use crate::store::{DeliveryId, ListFilter, Replay, ReplayId, Role, Store, Timestamp};
use crate::{telemetry, verify, Application};

#[derive(Parser)]
#[command(
    name = "accelerate-relay",
    version,
    about = "Relays Checkout.com payment webhooks to Accelerate"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Serve,
    /// Validate the environment and print what would run, secrets masked.
    CheckConfig,
    /// Print the Cko-Signature of FILE (or standard input) under KEY.
    Sign {
        #[arg(long)]
        key: String,
        file: Option<PathBuf>,
    },
    /// Send each JSON file as Checkout.com would (signed, same headers) and
    /// print what the relay answered, one line each.
    Replay {
        /// The relay's webhook URL, e.g. http://127.0.0.1:8080/webhooks/checkoutdotcom/sandbox
        #[arg(long)]
        url: String,
        /// The Authorization header value configured at Checkout.com.
        #[arg(long)]
        authorization: String,
        /// The webhook's signature key.
        #[arg(long)]
        signature_key: String,
        /// A PEM file of CA certificates to trust for an https:// URL, beside
        /// the bundled roots (a relay whose certificate is from a private CA,
        /// or self-signed).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Inspect and replay deliveries, straight on the store (RELAY_DATABASE_URL).
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Pause, resume and show each environment's deliveries, for the whole
    /// fleet, straight on the store (RELAY_DATABASE_URL).
    Environments {
        #[command(subcommand)]
        command: EnvironmentsCommand,
    },
    /// Exit 0 when the local relay answers /healthz (for container health checks).
    Healthcheck,
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// Deliveries newest first, one line each (`--json`: one JSON object a line).
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        environment: Option<String>,
        #[arg(long)]
        accelerate_token: Option<String>,
        #[arg(long)]
        event_id: Option<String>,
        /// Checkout.com's payment id (`data.id`, pay_…).
        #[arg(long)]
        payment_id: Option<String>,
        /// RFC 3339 in UTC, e.g. 2026-11-25T18:00:00Z
        #[arg(long)]
        received_after: Option<String>,
        #[arg(long)]
        received_before: Option<String>,
        /// At most 500.
        #[arg(long, default_value_t = ListFilter::DEFAULT_LIMIT)]
        limit: u32,
        /// Where the previous page ended (printed after a full page).
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One delivery with its attempt history (`--json` for scripts).
    Show {
        id: DeliveryId,
        #[arg(long)]
        json: bool,
    },
    /// Make a delivery pending and due now, with the whole retry schedule again.
    Retry { id: DeliveryId },
    /// Make every dead delivery (of one environment, or all) pending and due now.
    RetryDead {
        #[arg(long)]
        environment: Option<Environment>,
    },
    /// Send again every event of an environment received in a time range
    /// (delivered ones included); the running relay sends them, paced.
    Replay {
        #[command(subcommand)]
        command: ReplayCommand,
    },
}

#[derive(Subcommand)]
enum EnvironmentsCommand {
    /// Each environment: paused or not, breaker, rate, pending count and
    /// oldest pending age (`--json`: one JSON object a line).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Hold every attempt to ENVIRONMENT (events are still accepted and
    /// stored); every relay obeys within a second, and across restarts.
    Pause { environment: Environment },
    /// Let ENVIRONMENT's held deliveries drain at the paced rate, oldest first.
    Resume { environment: Environment },
}

#[derive(Subcommand)]
enum ReplayCommand {
    /// Record a replay (prints its id); `--dry-run` only counts.
    Start {
        #[arg(long)]
        environment: String,
        /// RFC 3339 in UTC, inclusive, e.g. 2026-11-25T18:00:00Z
        #[arg(long)]
        received_after: String,
        /// RFC 3339 in UTC, exclusive; at most now.
        #[arg(long)]
        received_before: String,
        /// pending, delivered or dead; give it once per status.
        #[arg(long = "status", required = true)]
        statuses: Vec<String>,
        #[arg(long)]
        dry_run: bool,
    },
    /// A replay's state, matched and queued counts.
    Show { id: ReplayId },
    /// The latest replays, newest first.
    List,
    /// Stop a running replay: what it already made due is sent, nothing more.
    Cancel { id: ReplayId },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(),
        Command::CheckConfig => check_config(),
        Command::Sign { key, file } => sign(&key, file),
        Command::Replay {
            url,
            authorization,
            signature_key,
            ca_file,
            files,
        } => runtime().and_then(|rt| {
            rt.block_on(replay(
                &url,
                &authorization,
                &signature_key,
                ca_file.as_deref(),
                &files,
            ))
        }),
        Command::Deliveries { command } => {
            runtime().and_then(|rt| rt.block_on(deliveries(command)))
        }
        Command::Environments { command } => {
            runtime().and_then(|rt| rt.block_on(environments(command)))
        }
        Command::Healthcheck => runtime().and_then(|rt| rt.block_on(healthcheck())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accelerate-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

fn serve() -> anyhow::Result<()> {
    let config = Config::from_env().context("configuration error")?;
    telemetry::init(config.log_format);
    runtime()?.block_on(async {
        let app = Application::build(config).await?;
        app.run_until_stopped().await?;
        anyhow::Ok(())
    })
}

fn check_config() -> anyhow::Result<()> {
    let config = Config::from_env().context("configuration error")?;
    println!("listen:               {}", config.listen);
    println!("database:             {}", config.database.display_url());
    println!(
        "stored at rest:       {}",
        config.database.store_key.as_ref().map_or_else(
            || "IN CLEAR: bodies (card holder data) and headers are stored as received \
                (RELAY_STORE_KEY not set)"
                .to_owned(),
            |keys| format!("sealed (AES-256-GCM), RELAY_STORE_KEY {}", keys.masked())
        )
    );
    for env in config.environments() {
        let creds = config
            .credentials(env)
            .expect("listed environments have keys");
        println!("environment:          {env}");
        println!("  authorization keys: {}", creds.authorization.masked());
        println!("  signature keys:     {}", creds.signature.masked());
        println!("  forwards to:        {}", config.accelerate_url(env));
        println!(
            "  leaves:             {}",
            config.proxies.describe(config.accelerate_url(env))
        );
    }
    println!(
        "TLS trust:            {}",
        crate::egress::describe_trust(config.accelerate_ca.as_ref())
    );
    println!("event types:          {}", config.event_types.join(","));
    println!("max body bytes:       {}", config.max_body_bytes);
    println!(
        "delivery timeout:     {} ms",
        config.delivery_timeout.as_millis()
    );
    println!("delivery concurrency: {}", config.delivery_concurrency);
    println!(
        "delivery rate:        {} per environment, for the whole fleet",
        config
            .delivery_rate
            .map_or("unlimited".to_owned(), |r| format!("{r}/s"))
    );
    println!(
        "in flight per env:    {} per replica",
        config.environment_concurrency
    );
    println!(
        "breaker:              opens after {} failed attempts in a row; a probe every {}",
        config.breaker_failures,
        humantime::format_duration(config.breaker_probe_interval)
    );
    println!("retry schedule:       {}", config.retry_schedule);
    println!("lease:                {} ms", config.lease.as_millis());
    println!(
        "retention:            {} h",
        config.retention.as_secs() / 3600
    );
    println!(
        "admin API:            {}",
        match &config.admin_token {
            Some(tokens) => format!(
                "on, {} (each checked: printable ASCII, at least {} characters)",
                match tokens.iter().count() {
                    1 => "1 token".to_owned(),
                    n => format!("{n} tokens"),
                },
                crate::config::ADMIN_TOKEN_MIN_CHARS
            ),
            None => "off (RELAY_ADMIN_TOKEN not set)".to_owned(),
        }
    );
    println!(
        "console cookie:       {}",
        if config.console_secure_cookie {
            "Secure (HTTPS only)"
        } else {
            "not Secure (RELAY_CONSOLE_SECURE_COOKIE=false: plain HTTP, local use only)"
        }
    );
    println!(
        "admin and metrics on: {}",
        config.admin_listen.map_or_else(
            || format!(
                "{} (the webhook port; RELAY_ADMIN_LISTEN not set)",
                config.listen
            ),
            |a| a.to_string()
        )
    );
    println!(
        "allowed sources:      {}",
        config.sources.as_ref().map_or_else(
            || "any (RELAY_ALLOWED_SOURCES not set)".to_owned(),
            |p| p.describe()
        )
    );
    println!("log format:           {}", config.log_format);
    Ok(())
}

fn sign(key: &str, file: Option<PathBuf>) -> anyhow::Result<()> {
    let body = match file {
        Some(path) => read_file(&path)?,
        None => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .context("cannot read standard input")?;
            body
        }
    };
    println!("{}", verify::sign(key.as_bytes(), &body));
    Ok(())
}

fn read_file(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

async fn replay(
    url: &str,
    authorization: &str,
    signature_key: &str,
    ca_file: Option<&std::path::Path>,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    let mut client = reqwest::Client::builder().timeout(Duration::from_secs(15));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("--ca-file: could not read {}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
            format!(
                "--ca-file: {} is not a PEM certificate bundle",
                path.display()
            )
        })?;
        anyhow::ensure!(
            !certificates.is_empty(),
            "--ca-file: {} holds no certificate",
            path.display()
        );
        for certificate in certificates {
            client = client.add_root_certificate(certificate);
        }
    }
    let client = client.build()?;
    let mut refused = 0;
    for path in files {
        let body = read_file(path)?;
        let signature = verify::sign(signature_key.as_bytes(), &body);
        let answer = client
            .post(url)
            .header("content-type", "application/json")
            .header("authorization", authorization)
            .header("cko-signature", signature)
            .body(body)
            .send()
            .await;
        match answer {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                println!("{} {} {}", path.display(), status.as_u16(), text.trim());
                if !status.is_success() {
                    refused += 1;
                }
            }
            Err(e) => {
                println!("{} error {}", path.display(), e.without_url());
                refused += 1;
            }
        }
    }
    if refused > 0 {
        bail!("{refused} of {} not answered 2xx", files.len());
    }
    Ok(())
}

async fn deliveries(command: DeliveriesCommand) -> anyhow::Result<()> {
    telemetry::init_for_operator_commands();
    let database = DatabaseConfig::from_env().context("configuration error")?;
    let store = Store::open(&database, Role::Tool)
        .await
        .context("cannot open the store named by RELAY_DATABASE_URL")?;
    let retention = crate::config::retention_from_env().context("configuration error")?;
    let operations = Operations::new(store.clone(), None, retention);
    let result = run_deliveries(&operations, command).await;
    store.close().await;
    result
}

async fn environments(command: EnvironmentsCommand) -> anyhow::Result<()> {
    telemetry::init_for_operator_commands();
    let database = DatabaseConfig::from_env().context("configuration error")?;
    let rate = crate::config::delivery_rate_from_env().context("configuration error")?;
    let store = Store::open(&database, Role::Tool)
        .await
        .context("cannot open the store named by RELAY_DATABASE_URL")?;
    let retention = crate::config::retention_from_env().context("configuration error")?;
    let operations = Operations::new(store.clone(), None, retention).with_rate(rate);
    let result = run_environments(&operations, command).await;
    store.close().await;
    result
}

async fn run_environments(
    operations: &Operations,
    command: EnvironmentsCommand,
) -> anyhow::Result<()> {
    let cli = Caller::cli();
    let (env, paused) = match command {
        EnvironmentsCommand::List { json } => {
            for view in operations.environments().await? {
                if json {
                    println!("{}", serde_json::to_string(&view)?);
                } else {
                    println!("{}", environment_line(&view));
                }
            }
            return Ok(());
        }
        EnvironmentsCommand::Pause { environment } => (environment, true),
        EnvironmentsCommand::Resume { environment } => (environment, false),
    };
    let changed = operations.pause(&cli, env, paused).await?;
    println!(
        "{env}: {}",
        match (paused, changed) {
            (true, true) => "paused; every relay holds its attempts within a second",
            (true, false) => "was already paused",
            (false, true) => "resumed; held deliveries drain at the paced rate, oldest first",
            (false, false) => "was not paused",
        }
    );
    Ok(())
}

fn environment_line(v: &operations::EnvironmentView) -> String {
    let paused = match (&v.paused_at, &v.paused_by) {
        (Some(at), Some(by)) => format!("paused since {at} by {by}"),
        (Some(at), None) => format!("paused since {at}"),
        _ => "flowing".to_owned(),
    };
    let breaker = match &v.breaker_opened_at {
        Some(at) => format!("breaker open since {at}"),
        None => format!(
            "breaker closed ({} failed in a row)",
            v.consecutive_failures
        ),
    };
    let rate = v
        .rate_per_second
        .map_or("unlimited".to_owned(), |r| format!("{r}/s"));
    let oldest = v
        .oldest_pending_age_seconds
        .map_or(String::new(), |s| format!(", oldest {s} s"));
    format!(
        "{:<10}  {paused}  {breaker}  rate {rate}  {} pending{oldest}",
        v.environment, v.pending
    )
}

async fn run_deliveries(operations: &Operations, command: DeliveriesCommand) -> anyhow::Result<()> {
    let cli = Caller::cli();
    match command {
        DeliveriesCommand::List {
            status,
            environment,
            accelerate_token,
            event_id,
            payment_id,
            received_after,
            received_before,
            limit,
            cursor,
            json,
        } => {
            let limit = limit.to_string();
            let given = [
                ("status", status),
                ("environment", environment),
                ("accelerate_token", accelerate_token),
                ("event_id", event_id),
                ("payment_id", payment_id),
                ("received_after", received_after),
                ("received_before", received_before),
                ("cursor", cursor),
                ("limit", Some(limit)),
            ];
            let pairs = given
                .iter()
                .filter_map(|(name, value)| value.as_deref().map(|v| (*name, v)));
            let filter = ListFilter::parse(pairs).map_err(|e| anyhow::anyhow!(e))?;
            let deliveries = operations.list(&cli, &filter).await?;
            for delivery in &deliveries {
                if json {
                    println!("{}", serde_json::to_string(delivery)?);
                } else {
                    println!("{}", delivery_line(delivery));
                }
            }
            if deliveries.len() == filter.limit as usize {
                if let Some(last) = deliveries.last() {
                    eprintln!("more: add --cursor {} for the next page", last.id);
                }
            }
        }
        DeliveriesCommand::Show { id, json } => {
            let detail = operations.detail(&cli, id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                let delivery = &detail.delivery;
                println!("{}", delivery_line(delivery));
                if let Some(next) = &delivery.next_attempt_at {
                    println!("  next attempt at  {next}");
                }
                if let Some(at) = &delivery.delivered_at {
                    println!("  delivered at     {at}");
                }
                if let Some(error) = &delivery.last_error {
                    println!("  last error       {error}");
                }
                println!("  attempts:");
                for a in &detail.attempt_history {
                    println!(
                        "    #{:<3} {}  {:>6} ms  {:<10} {}",
                        a.attempt,
                        a.started_at,
                        a.duration_ms,
                        a.outcome,
                        a.message.as_deref().unwrap_or("")
                    );
                }
            }
        }
        DeliveriesCommand::Retry { id } => {
            operations.retry(&cli, id).await?;
            println!("{id} is pending and due now");
        }
        DeliveriesCommand::RetryDead { environment } => {
            let n = operations.retry_dead(&cli, environment).await?;
            println!("{}", dead_made_due(n));
        }
        DeliveriesCommand::Replay { command } => replays(operations, &cli, command).await?,
    }
    Ok(())
}

fn dead_made_due(n: u64) -> String {
    match n {
        1 => "1 dead delivery is pending and due now".to_owned(),
        n => format!("{n} dead deliveries are pending and due now"),
    }
}

async fn replays(
    operations: &Operations,
    cli: &Caller,
    command: ReplayCommand,
) -> anyhow::Result<()> {
    match command {
        ReplayCommand::Start {
            environment,
            received_after,
            received_before,
            statuses,
            dry_run,
        } => {
            let statuses: Vec<&str> = statuses.iter().map(String::as_str).collect();
            let request = operations::replay_request(
                &environment,
                &received_after,
                &received_before,
                &statuses,
                Timestamp::now(),
            )
            .map_err(|e| {
                anyhow::anyhow!(e
                    .replace("received_", "--received-")
                    .replace("statuses:", "--status:"))
            })?;
            let retained = operations.retained_since();
            if request.received_after < retained {
                eprintln!(
                    "note: delivered events received before {retained} are purged \
                     (RELAY_RETENTION_HOURS); a replay cannot send them again"
                );
            }
            if dry_run {
                let n = operations.preview_replay(&request).await?;
                println!("{n} deliveries would be sent again");
            } else {
                let replay = operations.start_replay(cli, &request).await?;
                println!("{}", replay_line(&replay));
                eprintln!(
                    "the running relay sends them; follow with `deliveries replay show {}`",
                    replay.id
                );
            }
        }
        ReplayCommand::Show { id } => println!("{}", replay_line(&operations.replay(id).await?)),
        ReplayCommand::List => {
            for replay in operations.replays().await? {
                println!("{}", replay_line(&replay));
            }
        }
        ReplayCommand::Cancel { id } => {
            println!("{}", replay_line(&operations.cancel_replay(cli, id).await?))
        }
    }
    Ok(())
}

/// One replay on one line, for people.
fn replay_line(r: &Replay) -> String {
    let statuses: Vec<&str> = r.request.statuses.iter().map(|s| s.as_str()).collect();
    format!(
        "{:<8} {:<9} {:<10} received {} to {}  statuses {}  matched {}  queued {}",
        r.id,
        r.state.as_str(),
        r.request.environment,
        r.request.received_after,
        r.request.received_before,
        statuses.join(","),
        r.matched,
        r.queued
    )
}

/// One delivery on one line, for people.
fn delivery_line(d: &crate::store::Delivery) -> String {
    format!(
        "{:<10} {:<9} {:<10} {}  token {}  attempts {}  received {}",
        d.id, d.status, d.environment, d.event_id, d.accelerate_token, d.attempts, d.received_at
    )
}

/// Asks the relay on this machine at the address it listens on
/// (`RELAY_LISTEN`); a wildcard address is probed on the loopback address of
/// its family, so `[::]:8080` is checked at `[::1]:8080`.
async fn healthcheck() -> anyhow::Result<()> {
    let listen = std::env::var("RELAY_LISTEN").unwrap_or_else(|_| "0.0.0.0:8080".to_owned());
    let mut addr = std::net::ToSocketAddrs::to_socket_addrs(listen.trim())
        .ok()
        .and_then(|mut addrs| addrs.next())
        .with_context(|| format!("RELAY_LISTEN: `{listen}` is not an address; write HOST:PORT"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    // A relay serving HTTPS is probed over TLS, trusting the certificate it
    // is configured with (its name is rarely localhost).
    if let Some(cert) = std::env::var_os("RELAY_TLS_CERT").filter(|c| !c.is_empty()) {
        let status = crate::tls::probe_healthz(addr, std::path::Path::new(&cert))
            .await
            .map_err(|e| anyhow::anyhow!("https://{addr}/healthz does not answer: {e}"))?;
        if !(200..300).contains(&status) {
            bail!("https://{addr}/healthz answered {status}");
        }
        return Ok(());
    }
    let url = format!("http://{addr}/healthz");
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("{url} does not answer"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    Ok(())
}
