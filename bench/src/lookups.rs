//! `--lookups`: support's questions at a million stored rows. On each store:
//! the query plan of every filter, single-client latency of each lookup
//! through the admin API, then webhooks at a fixed rate with and without 32
//! concurrent admin readers, probing `/readyz` and `store_up` throughout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accelerate_relay::config::DatabaseConfig;
use accelerate_relay::secret::Secret;
use accelerate_relay::store::{ListFilter, Role, Store, Timestamp};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sqlx::Connection;

use crate::load::{self, open_loop, percentile, Clock, Events, Target};
use crate::mock::Mock;
use crate::procs::{settle_disk, start_relay_with};
use crate::Args;

const TOKEN: &str = "bench-admin-token-0123456789abcdefghijklmnop";
const DAY_MS: i64 = 24 * 3600 * 1000;

/// The lookups timed, as admin API queries; `{n}` is a stored row's number.
const CASES: &[(&str, &str)] = &[
    ("event id", "event_id=evt_hist_{n}"),
    (
        "AccelerateToken",
        "accelerate_token=tok_acc_hist_{n}_0123456789",
    ),
    ("payment id", "payment_id=pay_hist_{n}"),
    ("status=delivered", "status=delivered"),
    ("status=pending", "status=pending"),
    ("status=dead", "status=dead"),
    ("environment", "environment=production"),
    ("status+environment", "status=dead&environment=production"),
    ("received_after", "received_after={from}"),
    ("received_before", "received_before={to}"),
    ("time range", "received_after={from}&received_before={to}"),
    (
        "range+status",
        "status=delivered&received_after={from}&received_before={to}",
    ),
    (
        "range+status+env",
        "status=dead&environment=production&received_before={to}",
    ),
    (
        "token+status",
        "accelerate_token=tok_acc_hist_{n}_0123456789&status=delivered",
    ),
    ("payment+env", "payment_id=pay_hist_{n}&environment=sandbox"),
    ("next page (cursor)", "status=delivered&cursor={cursor}"),
];

pub async fn run(args: &Args, clock: Clock, work: &tempfile::TempDir) -> anyhow::Result<()> {
    let rows = args.scale_rows;
    let mut stores = vec![(
        "SQLite",
        format!("sqlite://{}", work.path().join("lookups.db").display()),
        None,
    )];
    if !args.no_postgres {
        let (url, name) = crate::create_pg_database(&args.postgres).await?;
        stores.push(("PostgreSQL", url, Some(name)));
    }
    let events = Arc::new(Events::new(args.rate as usize * args.seconds as usize * 2));
    let mut verdicts = Vec::new();
    for (name, url, database) in &stores {
        let result = one_store(name, url, rows, args, &events, clock, work).await;
        if let Some(database) = database {
            crate::drop_pg_database(&args.postgres, database).await;
        }
        verdicts.push((name, result?));
    }
    println!("\n## Lookups at {rows} stored rows\n");
    for (name, verdict) in &verdicts {
        println!("{name}: {verdict}");
    }
    Ok(())
}

async fn one_store(
    name: &str,
    url: &str,
    rows: usize,
    args: &Args,
    events: &Arc<Events>,
    clock: Clock,
    work: &tempfile::TempDir,
) -> anyhow::Result<String> {
    let mock = Mock::start(events.bodies.len(), clock).await?;
    let vars = [("RELAY_ADMIN_TOKEN", TOKEN)];
    let log = |what: &str| work.path().join(format!("lookups-{name}-{what}.log"));
    start_relay_with(url, &mock.url(), &log("init"), &vars)
        .await?
        .stop();
    eprintln!("{name}: writing {rows} rows (6 days; 2% pending, 2% dead)…");
    let started = Instant::now();
    let now = now_ms();
    fill(url, rows, now).await?;
    eprintln!("{name}: filled in {:.0?}", started.elapsed());
    settle_disk();

    // The plans, from the relay's own list query.
    let store = Store::open(
        &DatabaseConfig {
            url: Secret::new(url),
            pool_size: 2,
            statement_timeout: Duration::from_secs(30),
            store_key: None,
        },
        Role::Tool,
    )
    .await?;
    let relay = start_relay_with(url, &mock.url(), &log("relay"), &vars).await?;
    let mut admin = Admin::connect(relay.addr).await?;
    let cursor = {
        let page = admin
            .get("/admin/deliveries?status=delivered&limit=50")
            .await?;
        let text = String::from_utf8_lossy(&page.1).into_owned();
        text.split("\"next\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let day = |n: i64| Timestamp(now - n * DAY_MS).to_string();
    let query = |template: &str, n: usize| {
        template
            .replace("{n}", &n.to_string())
            .replace("{from}", &day(4))
            .replace("{to}", &day(2))
            .replace("{cursor}", &cursor)
    };

    println!("\n### {name}: {rows} rows, single client, 200 lookups each\n");
    println!("| lookup | query | p50 ms | p99 ms | max ms | plan |");
    println!("|---|---|---:|---:|---:|---|");
    let mut worst: f64 = 0.0;
    for (label, template) in CASES {
        let filter = ListFilter::parse(
            query(template, 1)
                .split('&')
                .filter_map(|pair| pair.split_once('=')),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let plan = store.list_plan(&filter, false).await?.join(" / ");
        let mut latencies = Vec::new();
        for k in 0..200 {
            let n = 1 + (k * 4_999 + 17) % rows;
            let path = format!("/admin/deliveries?{}", query(template, n));
            let started = Instant::now();
            let (status, _) = admin.get(&path).await?;
            latencies.push(started.elapsed().as_micros() as u64);
            anyhow::ensure!(status == 200, "{path}: {status}");
        }
        latencies.sort_unstable();
        let p99 = percentile(&latencies, 99.0);
        worst = worst.max(p99);
        println!(
            "| {label} | `{}` | {:.2} | {p99:.2} | {:.2} | `{}` |",
            query(template, 1),
            percentile(&latencies, 50.0),
            *latencies.last().unwrap_or(&0) as f64 / 1000.0,
            shorten(&plan),
        );
    }
    store.close().await;

    // Webhooks at a fixed rate, alone and beside 32 readers.
    let target = Target {
        addr: relay.addr,
        path: crate::WEBHOOK.into(),
        tls: None,
    };
    let duration = Duration::from_secs(args.seconds);
    let half = events.bodies.len() / 2;
    let mut p99s = Vec::new();
    let mut probes = Vec::new();
    for readers in [0usize, 32] {
        eprintln!(
            "{name}: {} events/s for {} s, {readers} admin readers…",
            args.rate, args.seconds
        );
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        // The readers on a runtime of their own at a lower priority, so that
        // reading their pages never delays the load generator's sends on the
        // bench's CPU: the latency measured is the relay's.
        let readers_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .on_thread_start(|| {
                let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
            })
            .enable_all()
            .build()?;
        for r in 0..readers {
            let (stop, reads) = (Arc::clone(&stop), Arc::clone(&reads));
            let paths: Vec<String> = CASES
                .iter()
                .enumerate()
                .map(|(i, (_, t))| {
                    format!(
                        "/admin/deliveries?limit=500&{}",
                        query(t, 1 + (r * 31 + i) % rows)
                    )
                })
                .collect();
            let addr = relay.addr;
            tasks.push(readers_runtime.spawn(async move {
                let mut admin = Admin::connect(addr).await?;
                let mut i = r;
                while !stop.load(Ordering::Relaxed) {
                    let path = &paths[i % paths.len()];
                    let (status, _) = admin.get(path).await?;
                    anyhow::ensure!(status == 200, "{path}: {status}");
                    reads.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                Ok(())
            }));
        }
        let probe = tokio::spawn(probe_health(relay.addr, Arc::clone(&stop)));
        let first = if readers == 0 { 0 } else { half };
        let outcome = open_loop(&target, events, first, args.rate, duration, 50, clock).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await??;
        }
        readers_runtime.shutdown_background();
        let health = probe.await??;
        let p99 = outcome.percentile_ms(99.0);
        println!(
            "\n{name}, {readers} readers: webhooks p50 {:.2} ms, p99 {p99:.2} ms, {} accepted, {} failed; \
             {} admin pages read; /readyz probes {} (slowest {:.1} ms), not 200: {}; scrapes {}, store_up 0: {}",
            outcome.percentile_ms(50.0),
            outcome.accepted,
            outcome.failed,
            reads.load(Ordering::Relaxed),
            health.probes,
            health.slowest_ms,
            health.not_ready,
            health.scrapes,
            health.store_down,
        );
        p99s.push(p99);
        probes.push(health);
    }
    relay.stop();
    let ratio = p99s[1] / p99s[0];
    let healthy = probes.iter().all(|h| h.not_ready == 0 && h.store_down == 0);
    Ok(format!(
        "worst lookup p99 {worst:.2} ms (target ≤ 5); webhook p99 {:.2} ms alone, {:.2} ms beside 32 readers \
         ({:+.0}%, target within +20%); store reported down: {}",
        p99s[0],
        p99s[1],
        (ratio - 1.0) * 100.0,
        if healthy { "never" } else { "YES" },
    ))
}

struct Health {
    probes: u64,
    scrapes: u64,
    not_ready: u64,
    store_down: u64,
    slowest_ms: f64,
}

/// `/readyz` every 100 ms, as a load balancer would, and `/metrics` every second.
async fn probe_health(addr: SocketAddr, stop: Arc<AtomicBool>) -> anyhow::Result<Health> {
    let mut health = Health {
        probes: 0,
        scrapes: 0,
        not_ready: 0,
        store_down: 0,
        slowest_ms: 0.0,
    };
    let mut client = Admin::connect(addr).await?;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let (status, _) = client.get("/readyz").await?;
        health.slowest_ms = health
            .slowest_ms
            .max(started.elapsed().as_secs_f64() * 1000.0);
        health.not_ready += u64::from(status != 200);
        // A scrape a second: fifteen times Prometheus's default, and not ten
        // a second, whose gauges (every pending and dead row counted) would
        // be a load of their own beside the readers.
        if health.probes.is_multiple_of(10) {
            let (_, metrics) = client.get("/metrics").await?;
            health.store_down += u64::from(
                !String::from_utf8_lossy(&metrics).contains("accelerate_relay_store_up 1"),
            );
            health.scrapes += 1;
        }
        health.probes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(health)
}

/// One keep-alive connection with the admin token.
struct Admin {
    sender: SendRequest<Empty<Bytes>>,
}

impl Admin {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self { sender })
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let request = hyper::Request::get(path)
            .header("host", "relay")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Empty::new())?;
        let answer = self.sender.send_request(request).await?;
        let status = answer.status().as_u16();
        let body = answer.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// `rows` rows over the last six days (inside the default retention): every
/// 50th pending (due in a year, so the relay leaves them) and every 50th dead.
async fn fill(url: &str, rows: usize, now: i64) -> anyhow::Result<()> {
    let body = load::event_body(0).to_vec();
    let step = 6 * DAY_MS / rows as i64;
    let select = |blob: &str, from: &str| {
        format!(
            "SELECT CASE WHEN x % 4 = 0 THEN 'production' ELSE 'sandbox' END, 'evt_hist_' || x, \
             'payment_approved', 'tok_acc_hist_' || x || '_0123456789', 'pay_hist_' || x, $1, \
             CAST('content-type:application/json' AS {blob}), \
             CASE x % 50 WHEN 1 THEN 'pending' WHEN 2 THEN 'dead' ELSE 'delivered' END, 1, \
             {due}, {start} + x * {step}, \
             CASE x % 50 WHEN 1 THEN NULL WHEN 2 THEN NULL ELSE {start} + x * {step} END, 200, 1 {from}",
            due = now + 365 * DAY_MS,
            start = now - 6 * DAY_MS,
        )
    };
    let insert = "INSERT INTO deliveries (environment, event_id, event_type, accelerate_token, \
         payment_id, body, headers, status, attempts, next_attempt_at, received_at, delivered_at, \
         last_status, format) ";
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.to_owned();
        let sql = format!(
            "WITH RECURSIVE c(x) AS (SELECT $2 UNION ALL SELECT x + 1 FROM c WHERE x < $3) {insert}{}",
            select("BLOB", "FROM c")
        )
        // SQLite numbers `$n` in order of appearance; `?n` is positional.
        .replace('$', "?");
        return tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let conn = rusqlite::Connection::open(&path)?;
            conn.pragma_update(None, "synchronous", "OFF")?;
            for start in (1..=rows).step_by(100_000) {
                let end = (start + 99_999).min(rows);
                conn.execute(&sql, rusqlite::params![body, start as i64, end as i64])?;
            }
            conn.execute_batch("ANALYZE")?;
            drop(conn);
            std::fs::File::open(&path)?.sync_all()?;
            Ok(())
        })
        .await?;
    }
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let sql = format!(
        "{insert}{}",
        select("BYTEA", "FROM generate_series($2::bigint, $3::bigint) AS x")
    );
    for start in (1..=rows).step_by(100_000) {
        let end = (start + 99_999).min(rows);
        sqlx::query(&sql)
            .bind(&body)
            .bind(start as i64)
            .bind(end as i64)
            .execute(&mut conn)
            .await?;
    }
    sqlx::query("VACUUM ANALYZE deliveries")
        .execute(&mut conn)
        .await?;
    Ok(())
}

fn now_ms() -> i64 {
    Timestamp::now().0
}

/// The plan without PostgreSQL's cost figures, to fit a table cell.
fn shorten(plan: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for c in plan.chars() {
        match c {
            '(' if !skipping => skipping = true,
            ')' if skipping => skipping = false,
            c if !skipping => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}
