//! The load generator: pre-signed, real-shaped events with unique ids sent over
//! keep-alive HTTP/1.1 connections, either as fast as the target answers
//! (closed loop) or at a fixed rate (open loop, latency measured from the
//! scheduled send time so a slow answer cannot hide the requests it delays).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub const AUTH: &str = "bench-authorization-key";
pub const SIG_KEY: &str = "bench-signature-key";

/// Microseconds since the benchmark started; shared by sender and mock.
#[derive(Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    pub fn micros(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// Pre-built events: body and signature per global index.
pub struct Events {
    pub bodies: Vec<Bytes>,
    pub signatures: Vec<String>,
    /// When each event was (scheduled to be) sent, for end-to-end latency.
    pub sent_at: Vec<AtomicU64>,
}

/// A real-shaped approved payment (the fixture's shape, one line) with id `i`.
pub fn event_body(i: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"id":"{}","type":"payment_approved","version":"1.0.33","created_on":"2026-11-24T14:15:22.134Z","data":{{"id":"pay_{i:012}","action_id":"act_y3oqhf46pyzuxjbcn2giaqnb44","amount":6540,"currency":"USD","approved":true,"status":"Authorized","auth_code":"643381","response_code":"10000","response_summary":"Approved","balances":{{"total_authorized":6540,"total_voided":0,"available_to_void":6540,"total_captured":0,"available_to_capture":6540,"total_refunded":0,"available_to_refund":0}},"source":{{"id":"src_nwd3m4in3hkuddfpjsaevunhdy","type":"card","expiry_month":6,"expiry_year":2029,"name":"Test Cardholder","scheme":"Visa","last4":"4242","fingerprint":"F31828E2BDABAE63EB694903825CDD36041CC6ED461440B81415895855502832","bin":"424242","card_type":"CREDIT","issuer_country":"GB"}},"customer":{{"id":"cus_y3oqhf46pyzuxjbcn2giaqnb44","email":"cardholder@example.com"}},"processed_on":"2026-11-24T14:15:21.900Z","reference":"ORD-{i}","metadata":{{"AccelerateToken":"tok_acc_{i:024}"}}}},"_links":{{"self":{{"href":"https://api.sandbox.checkout.com/workflows/events/{}"}}}}}}"#,
        event_id(i),
        event_id(i)
    ))
}

pub fn event_id(i: usize) -> String {
    format!("evt_bench_{i:012}")
}

/// The index back from a body, as the mock Accelerate sees it.
pub fn index_of(body: &[u8]) -> Option<usize> {
    let marker = b"evt_bench_";
    let at = body.windows(marker.len()).position(|w| w == marker)? + marker.len();
    std::str::from_utf8(body.get(at..at + 12)?)
        .ok()?
        .parse()
        .ok()
}

impl Events {
    pub fn new(count: usize) -> Self {
        let bodies: Vec<Bytes> = (0..count).map(event_body).collect();
        let signatures = bodies
            .iter()
            .map(|b| accelerate_relay::verify::sign(SIG_KEY.as_bytes(), b))
            .collect();
        let sent_at = (0..count).map(|_| AtomicU64::new(0)).collect();
        Self {
            bodies,
            signatures,
            sent_at,
        }
    }
}

#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    /// HTTPS (to `localhost`) with this client configuration.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// What one load phase saw.
#[derive(Default)]
pub struct Outcome {
    pub latencies_us: Vec<u64>,
    pub ok: u64,
    pub accepted: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub first: usize,
    pub end: usize,
}

impl Outcome {
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p)
    }
}

pub fn percentile(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    sorted_us[rank.min(sorted_us.len() - 1)] as f64 / 1000.0
}

struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(target: &Target) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let sender = match &target.tls {
            None => {
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                sender
            }
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(config))
                    .connect(name, stream)
                    .await?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(conn);
                sender
            }
        };
        Ok(Self { sender })
    }

    /// Sends event `i`; `Some(accepted)` on a 2xx answer.
    async fn send(
        &mut self,
        target: &Target,
        events: &Events,
        i: usize,
    ) -> anyhow::Result<Option<bool>> {
        self.sender.ready().await?;
        let request = Request::post(target.path.as_str())
            .header("host", "relay")
            .header("content-type", "application/json")
            .header("authorization", AUTH)
            .header("cko-signature", events.signatures[i].as_str())
            .body(Full::new(events.bodies[i].clone()))?;
        let response = self.sender.send_request(request).await?;
        let ok = response.status().is_success();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(ok.then(|| body.windows(8).any(|w| w == b"accepted")))
    }
}

async fn connect(target: &Target) -> Connection {
    loop {
        match Connection::open(target).await {
            Ok(c) => return c,
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// As fast as the target answers, `connections` at once, until `duration`
/// passes or the events in `range` run out.
pub async fn closed_loop(
    target: &Target,
    events: &Arc<Events>,
    range: std::ops::Range<usize>,
    connections: usize,
    duration: Duration,
    clock: Clock,
) -> Outcome {
    let next = Arc::new(AtomicUsize::new(range.start));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (target, events, next) = (target.clone(), Arc::clone(events), Arc::clone(&next));
            let end = range.end;
            tokio::spawn(async move {
                let mut conn = connect(&target).await;
                let mut out = Outcome::default();
                while started.elapsed() < duration {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        break;
                    }
                    let t0 = Instant::now();
                    events.sent_at[i].store(clock.micros(), Ordering::Relaxed);
                    record(&mut out, conn.send(&target, &events, i).await, t0.elapsed());
                    if out.failed > 0 && out.failed % 1000 == 1 {
                        conn = connect(&target).await;
                    }
                }
                out
            })
        })
        .collect();
    let mut total = merge(tasks).await;
    total.elapsed = started.elapsed();
    total.first = range.start;
    total.end = next.load(Ordering::Relaxed).min(range.end);
    total
}

/// `rate` events per second for `duration`, spread over `connections`.
pub async fn open_loop(
    target: &Target,
    events: &Arc<Events>,
    first: usize,
    rate: u64,
    duration: Duration,
    connections: usize,
    clock: Clock,
) -> Outcome {
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (target, events) = (target.clone(), Arc::clone(events));
            tokio::spawn(async move {
                let mut conn = connect(&target).await;
                let mut out = Outcome::default();
                for k in (c..total).step_by(connections) {
                    let scheduled = start + interval * k as u32;
                    tokio::time::sleep_until(scheduled).await;
                    let i = first + k;
                    events.sent_at[i].store(clock.micros(), Ordering::Relaxed);
                    let result = conn.send(&target, &events, i).await;
                    // From the scheduled time: lateness counts as latency.
                    record(&mut out, result, scheduled.elapsed());
                    if out.failed > 0 && out.failed % 1000 == 1 {
                        conn = connect(&target).await;
                    }
                }
                out
            })
        })
        .collect();
    let mut outcome = merge(tasks).await;
    outcome.elapsed = start.elapsed();
    outcome.first = first;
    outcome.end = first + total;
    outcome
}

fn record(out: &mut Outcome, result: anyhow::Result<Option<bool>>, latency: Duration) {
    match result {
        Ok(Some(accepted)) => {
            out.ok += 1;
            out.accepted += u64::from(accepted);
            out.latencies_us.push(latency.as_micros() as u64);
        }
        _ => out.failed += 1,
    }
}

async fn merge(tasks: Vec<tokio::task::JoinHandle<Outcome>>) -> Outcome {
    let mut total = Outcome::default();
    for task in tasks {
        let out = task.await.expect("load task");
        total.ok += out.ok;
        total.accepted += out.accepted;
        total.failed += out.failed;
        total.latencies_us.extend(out.latencies_us);
    }
    total.latencies_us.sort_unstable();
    total
}

/// One GET, for readiness checks.
pub async fn get_ok(addr: SocketAddr, path: &str) -> bool {
    let plain = Target {
        addr,
        path: path.to_owned(),
        tls: None,
    };
    let Ok(mut conn) = Connection::open(&plain).await else {
        return false;
    };
    let Ok(request) = Request::get(path)
        .header("host", "relay")
        .body(Full::new(Bytes::new()))
    else {
        return false;
    };
    if conn.sender.ready().await.is_err() {
        return false;
    }
    matches!(conn.sender.send_request(request).await, Ok(r) if r.status().is_success())
}
