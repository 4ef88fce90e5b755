//! Pinned mode (`--pinned`): the load generator and the mocks on CPU 0, the
//! server under test alone on CPU 1, as a relay pod with a 1-CPU limit has
//! it. The ceiling (nginx `proxy_pass`, one worker) and the relay on each
//! store run alternately, round after round, so the VM's drift hits them
//! alike; the verdict is the median of the rounds, and CPU per event is
//! reported beside the rates.

use std::sync::Arc;
use std::time::Duration;

use crate::load::{closed_loop, open_loop, Clock, Events, Target};
use crate::mock::{Mock, MockTls};
use crate::procs::{postgres_cpu_seconds, settle_disk, start_nginx, start_relay_with, ThreadGroup};
use crate::{create_pg_database, drop_pg_database, wait_arrived, Args, WEBHOOK};

/// One server's phase in one round.
#[derive(Clone, Copy)]
struct Phase {
    /// Requests answered 2xx (nginx) or events accepted (relay) per second.
    rate: f64,
    /// The server process's user + system CPU per request or event, all threads.
    cpu_us: f64,
    /// PostgreSQL's own CPU per event (the relay on PostgreSQL only).
    db_cpu_us: Option<f64>,
    /// p99 accept latency at `args.rate` events/s (the relays only).
    p99_ms: Option<f64>,
    /// Context switches of the relay's threads per event (the relays only).
    switches: Option<f64>,
    /// CPU µs per event of each `ThreadGroup` (the relays only).
    threads: Option<[f64; ThreadGroup::COUNT]>,
    /// Write calls and kilobytes written per event (the relays only).
    writes: Option<(f64, f64)>,
}

pub async fn run(
    args: &Args,
    events: &Arc<Events>,
    clock: Clock,
    work: &tempfile::TempDir,
) -> anyhow::Result<()> {
    let mut rounds: Vec<[Option<Phase>; 5]> = Vec::new();
    let tls = match args.tls {
        true => Some(MockTls::new(work.path())?),
        false => None,
    };
    for round in 1..=args.rounds {
        eprintln!("round {round} of {}", args.rounds);
        let ceiling = proxy_phase(args, events, clock, work, round).await?;
        let sqlite_url = format!(
            "sqlite://{}",
            work.path().join(format!("pinned-{round}.db")).display()
        );
        let sqlite = relay_phase(args, events, clock, work, &sqlite_url, false, Https::No).await?;
        let mut https = [None, None];
        if let Some(tls) = &tls {
            for (slot, side) in [Https::ToAccelerate(tls), Https::FromCheckout(tls)]
                .into_iter()
                .enumerate()
            {
                let url = format!(
                    "sqlite://{}",
                    work.path()
                        .join(format!("pinned-tls-{round}-{slot}.db"))
                        .display()
                );
                https[slot] =
                    Some(relay_phase(args, events, clock, work, &url, false, side).await?);
            }
        }
        let postgres = if args.no_postgres {
            None
        } else {
            match create_pg_database(&args.postgres).await {
                Ok((url, name)) => {
                    let phase = relay_phase(args, events, clock, work, &url, true, Https::No).await;
                    if std::env::var_os("BENCH_PG_STATS").is_some() {
                        print_pg_stats(&url, &name).await;
                    }
                    drop_pg_database(&args.postgres, &name).await;
                    Some(phase?)
                }
                Err(e) => {
                    eprintln!("!!! PostgreSQL not reachable ({e}): no PostgreSQL phase !!!");
                    None
                }
            }
        };
        rounds.push([ceiling, Some(sqlite), postgres, https[0], https[1]]);
    }
    print(args, &rounds);
    if args.smoke {
        // Proves the pinned mode still measures, not how fast anything is.
        let relays: Vec<&Phase> = rounds
            .iter()
            .flat_map(|r| r[1..].iter().flatten())
            .collect();
        let broken = relays.is_empty()
            || relays
                .iter()
                .any(|p| p.rate <= 0.0 || p.threads.is_none_or(|t| t.iter().sum::<f64>() <= 0.0));
        anyhow::ensure!(
            !broken,
            "smoke run: a relay phase accepted nothing or its threads' CPU was not read"
        );
    }
    Ok(())
}

/// What PostgreSQL did per stored event in the phase, from its own
/// statistics (`BENCH_PG_STATS=1`): transactions, rows written, each
/// index's scans. Read after the relay stopped, so its sessions have
/// reported; attributes the database's CPU per event between builds.
async fn print_pg_stats(url: &str, name: &str) {
    use sqlx::Connection;
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
        eprintln!("BENCH_PG_STATS: could not connect to {name}");
        return;
    };
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&mut conn)
        .await
        .unwrap_or(0);
    let per = |n: i64| n as f64 / events.max(1) as f64;
    let xact: i64 = sqlx::query_scalar(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_one(&mut conn)
    .await
    .unwrap_or(0);
    eprintln!(
        "BENCH_PG_STATS {name}: {events} events, {:.3} transactions per event",
        per(xact)
    );
    let tables: Vec<(String, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, seq_scan, COALESCE(idx_scan, 0), n_tup_ins, n_tup_upd, \
         n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables ORDER BY relname",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    for (table, seq, idx, ins, upd, hot, del) in tables {
        eprintln!(
            "  table {table}: per event seq_scan {:.3} idx_scan {:.3} ins {:.3} upd {:.3} (hot {:.3}) del {:.3}",
            per(seq), per(idx), per(ins), per(upd), per(hot), per(del)
        );
    }
    let indexes: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT indexrelname::text, idx_scan, idx_tup_read FROM pg_stat_user_indexes ORDER BY indexrelname",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    for (index, scans, read) in indexes {
        eprintln!(
            "  index {index}: per event scans {:.3} tuples read {:.3}",
            per(scans),
            per(read)
        );
    }
}

async fn proxy_phase(
    args: &Args,
    events: &Arc<Events>,
    clock: Clock,
    work: &tempfile::TempDir,
    round: usize,
) -> anyhow::Result<Option<Phase>> {
    if args.no_nginx {
        return Ok(None);
    }
    let mock = Mock::start(events.bodies.len(), clock).await?;
    let nginx = start_nginx(
        &work.path().join(format!("nginx-pinned-{round}")),
        mock.addr,
    )
    .await?;
    let target = Target {
        addr: nginx.addr,
        path: "/proxy".into(),
        tls: None,
    };
    let cpu0 = nginx.cpu_seconds();
    let out = closed_loop(
        &target,
        events,
        0..events.bodies.len(),
        args.connections,
        Duration::from_secs(args.seconds),
        clock,
    )
    .await;
    let cpu = nginx.cpu_seconds() - cpu0;
    nginx.stop();
    Ok(Some(Phase {
        rate: out.ok as f64 / out.elapsed.as_secs_f64(),
        cpu_us: cpu * 1e6 / out.ok.max(1) as f64,
        db_cpu_us: None,
        p99_ms: None,
        switches: None,
        threads: None,
        writes: None,
    }))
}

/// Which side of a relay phase speaks HTTPS, if any.
#[derive(Clone, Copy)]
enum Https<'a> {
    No,
    /// Deliveries go to an HTTPS mock (RELAY_ACCELERATE_CA_FILE trusts it).
    ToAccelerate(&'a MockTls),
    /// The relay serves the webhooks over HTTPS (RELAY_TLS_CERT).
    FromCheckout(&'a MockTls),
}

/// The fixed-rate phase (for p99), then full speed (for rate and CPU).
async fn relay_phase(
    args: &Args,
    events: &Arc<Events>,
    clock: Clock,
    work: &tempfile::TempDir,
    database_url: &str,
    postgres: bool,
    https: Https<'_>,
) -> anyhow::Result<Phase> {
    settle_disk();
    let to_accelerate = match https {
        Https::ToAccelerate(tls) => Some(tls),
        _ => None,
    };
    let mock = Mock::start_with(events.bodies.len(), clock, to_accelerate).await?;
    let log = work.path().join(match (postgres, https) {
        (true, _) => "pinned-pg.log",
        (false, Https::No) => "pinned-sqlite.log",
        (false, Https::ToAccelerate(_)) => "pinned-sqlite-tls-out.log",
        (false, Https::FromCheckout(_)) => "pinned-sqlite-tls-in.log",
    });
    let file = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let extra: Vec<(&str, String)> = match https {
        Https::No => vec![],
        Https::ToAccelerate(tls) => vec![("RELAY_ACCELERATE_CA_FILE", file(&tls.ca_file))],
        Https::FromCheckout(tls) => vec![
            ("RELAY_TLS_CERT", file(&tls.cert_file)),
            ("RELAY_TLS_KEY", file(&tls.key_file)),
        ],
    };
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let relay = start_relay_with(database_url, &mock.url(), &log, &extra).await?;
    let target = Target {
        addr: relay.addr,
        path: WEBHOOK.into(),
        tls: match https {
            Https::FromCheckout(tls) => Some(Arc::clone(&tls.client)),
            _ => None,
        },
    };
    let seconds = Duration::from_secs(args.seconds);
    let fixed = open_loop(
        &target,
        events,
        0,
        args.rate,
        seconds,
        args.connections,
        clock,
    )
    .await;
    wait_arrived(&mock, fixed.first..fixed.end, fixed.accepted as usize).await;

    let (cpu0, db0, threads0) = (relay.cpu_seconds(), postgres_cpu_seconds(), relay.threads());
    let full = closed_loop(
        &target,
        events,
        fixed.end..events.bodies.len(),
        args.connections,
        seconds,
        clock,
    )
    .await;
    // Each accepted event's delivery is part of its cost: wait for them all.
    wait_arrived(&mock, full.first..full.end, full.accepted as usize).await;
    let (cpu, db) = (relay.cpu_seconds() - cpu0, postgres_cpu_seconds() - db0);
    let threads = relay.threads();
    relay.stop();
    let events = full.accepted.max(1) as f64;
    let per_event = |s: f64| s * 1e6 / events;
    Ok(Phase {
        rate: full.accepted as f64 / full.elapsed.as_secs_f64(),
        cpu_us: per_event(cpu),
        db_cpu_us: postgres.then(|| per_event(db)),
        p99_ms: Some(fixed.percentile_ms(99.0)),
        switches: Some(threads.switches.saturating_sub(threads0.switches) as f64 / events),
        threads: Some(threads.cpu_seconds_since(&threads0).map(per_event)),
        writes: Some((
            threads.write_calls.saturating_sub(threads0.write_calls) as f64 / events,
            threads.written.saturating_sub(threads0.written) as f64 / 1024.0 / events,
        )),
    })
}

fn print(args: &Args, rounds: &[[Option<Phase>; 5]]) {
    const NAMES: [&str; 5] = [
        "nginx proxy_pass (1 worker)",
        "relay, SQLite",
        "relay, PostgreSQL",
        "relay, SQLite, HTTPS to Accelerate",
        "relay, SQLite, HTTPS from Checkout.com",
    ];
    println!();
    println!(
        "## Pinned: load + mocks on CPU 0, server on CPU 1; {} rounds × {} s, {} connections, p99 at {}/s",
        rounds.len(), args.seconds, args.connections, args.rate
    );
    println!();
    println!("| round | server | req/s | × proxy_pass | CPU µs/event (server) | CPU µs/event (PostgreSQL) | p99 at {}/s | context switches/event |", args.rate);
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (i, round) in rounds.iter().enumerate() {
        for (name, phase) in NAMES.iter().zip(round) {
            let Some(p) = phase else { continue };
            let ratio = round[0].map(|c| p.rate / c.rate);
            println!(
                "| {} | {name} | {:.0} | {} | {:.0} | {} | {} | {} |",
                i + 1,
                p.rate,
                fmt(ratio, 2),
                p.cpu_us,
                fmt(p.db_cpu_us, 0),
                fmt(p.p99_ms, 2),
                fmt(p.switches, 1)
            );
        }
    }
    for (s, name) in NAMES.iter().enumerate() {
        let phases: Vec<Phase> = rounds.iter().filter_map(|r| r[s]).collect();
        if phases.is_empty() {
            continue;
        }
        let ratios: Vec<f64> = rounds
            .iter()
            .filter_map(|r| Some(r[s]?.rate / r[0]?.rate))
            .collect();
        // The median of a figure only some servers have; "—" for the others.
        let column = |figure: fn(&Phase) -> Option<f64>, decimals| {
            let median = figure(&phases[0]).map(|_| median(phases.iter().filter_map(figure)));
            fmt(median, decimals)
        };
        println!(
            "| median | {name} | {:.0} | {} | {:.0} | {} | {} | {} |",
            median(phases.iter().map(|p| p.rate)),
            fmt((!ratios.is_empty()).then(|| median(ratios.into_iter())), 2),
            median(phases.iter().map(|p| p.cpu_us)),
            column(|p| p.db_cpu_us, 0),
            column(|p| p.p99_ms, 2),
            column(|p| p.switches, 1),
        );
    }
    println!();
    println!("× proxy_pass is each round's ratio to the ceiling of the same round; the median row takes the median of those ratios.");
    println!();
    println!("Relay CPU µs per event by thread (medians of the rounds):");
    println!();
    let groups = ThreadGroup::ALL.map(ThreadGroup::name).join(" | ");
    println!("| server | {groups} | write calls/event | KB written/event |");
    println!("| --- |{}", " ---: |".repeat(ThreadGroup::ALL.len() + 2));
    for (s, name) in NAMES.iter().enumerate() {
        let per_thread: Vec<[f64; ThreadGroup::COUNT]> =
            rounds.iter().filter_map(|r| r[s]?.threads).collect();
        if per_thread.is_empty() {
            continue;
        }
        let writes: Vec<(f64, f64)> = rounds.iter().filter_map(|r| r[s]?.writes).collect();
        let mut cells: Vec<String> = (0..ThreadGroup::ALL.len())
            .map(|g| format!("{:.1}", median(per_thread.iter().map(|t| t[g]))))
            .collect();
        cells.push(format!("{:.1}", median(writes.iter().map(|w| w.0))));
        cells.push(format!("{:.1}", median(writes.iter().map(|w| w.1))));
        println!("| {name} | {} |", cells.join(" | "));
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "—".to_owned(), |v| format!("{v:.decimals$}"))
}
