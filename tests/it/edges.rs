//! HTTP at the edges, with raw sockets on both sides of the relay: what
//! Accelerate's status line decides, which header lines are verified and
//! forwarded, and that nothing is processed after a closing answer.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATH: &str = "/webhooks/checkoutdotcom/sandbox";

/// Writes `request` whole, then reads every answer until the relay closes
/// (or 10 s pass): the raw bytes, as text.
async fn exchange(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status codes of every answer in `raw`, in order.
fn statuses(raw: &str) -> Vec<u16> {
    raw.match_indices("HTTP/1.")
        .filter_map(|(at, _)| raw[at..].split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// A signed webhook as raw bytes, with the header lines given (each ending
/// in CRLF) and the HTTP version given.
fn webhook(id: &str, version: &str, headers: &str) -> Vec<u8> {
    let body = approved_event(id);
    let mut request = format!(
        "POST {PATH} HTTP/{version}\r\nHost: relay\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

fn signed(id: &str) -> String {
    format!(
        "Authorization: {SANDBOX_AUTH}\r\nCko-Signature: {}\r\n",
        sign(SANDBOX_SIG, &approved_event(id))
    )
}

/// A mock Accelerate on raw sockets that answers every request with a 200
/// status line and a head promising a 20-byte body, then sends nothing more
/// and keeps the connection open. Counts the requests it read.
async fn stalling_accelerate() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "http://{}/webhooks/checkoutdotcom",
        listener.local_addr().expect("address")
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    read.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&read).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if body.len() < length {
                        continue;
                    }
                    record.lock().expect("lock").push(head.to_owned());
                    read.clear();
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
                        .await;
                    // ... and the 20 bytes never come.
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
            });
        }
    });
    (url, seen)
}

/// Accelerate acknowledged with its status line: delivered at once, with the
/// status recorded, and never sent again, though the body never comes.
#[tokio::test]
async fn a_2xx_whose_body_stalls_is_delivered_once() {
    let (url, seen) = stalling_accelerate().await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("ACCELERATE_SANDBOX_URL", &url),
            ("RELAY_DELIVERY_TIMEOUT_MS", "3000"),
            ("RELAY_RETRY_SCHEDULE", "100ms,100ms,100ms"),
        ],
    )
    .await;
    let (status, _) = app.send_json("sandbox", approved_event("evt_stall")).await;
    assert_eq!(status, 200);
    assert!(
        app.reaches_status("evt_stall", "delivered", Duration::from_secs(3))
            .await,
        "a 200 status line marks the event delivered, whatever its body does; now {:?}",
        app.status_on_disk("evt_stall").await
    );
    let listed = app
        .store
        .list(
            &accelerate_relay::store::ListFilter::parse([("event_id", "evt_stall")])
                .expect("filter"),
        )
        .await
        .expect("list");
    let detail = app
        .store
        .detail(listed[0].id)
        .await
        .expect("detail")
        .expect("found");
    let history: Vec<_> = detail
        .attempt_history
        .iter()
        .map(|a| (a.outcome.as_str(), a.http_status))
        .collect();
    assert_eq!(history, [("delivered", Some(200))]);
    // Well past the whole retry schedule and another timeout: still one send.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        seen.lock().expect("lock").len(),
        1,
        "sent again after a 2xx"
    );
    assert_eq!(
        app.status_on_disk("evt_stall").await.as_deref(),
        Some("delivered")
    );
    app.stop().await;
}

/// Two `Cko-Signature` or two `Authorization` lines are refused whichever
/// comes first, nothing is stored or sent; one line is verified and that
/// line is what Accelerate gets.
#[tokio::test]
async fn a_second_signature_or_authorization_line_is_refused() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let port = app.port();
    let good = sign(SANDBOX_SIG, &approved_event("evt_dup"));
    let cases = [
        (
            format!("Authorization: {SANDBOX_AUTH}\r\nCko-Signature: {good}\r\nCko-Signature: 00\r\n"),
            401,
            "invalid_signature",
        ),
        (
            format!("Authorization: {SANDBOX_AUTH}\r\nCko-Signature: 00\r\nCko-Signature: {good}\r\n"),
            401,
            "invalid_signature",
        ),
        (
            format!("Authorization: {SANDBOX_AUTH}\r\nAuthorization: {SANDBOX_AUTH}\r\nCko-Signature: {good}\r\n"),
            401,
            "unauthorized",
        ),
        (
            format!("Authorization: wrong\r\nAuthorization: {SANDBOX_AUTH}\r\nCko-Signature: {good}\r\n"),
            401,
            "unauthorized",
        ),
    ];
    for (headers, status, error) in cases {
        let raw = exchange(
            port,
            &webhook("evt_dup", "1.1", &format!("{headers}Connection: close\r\n")),
        )
        .await;
        assert_eq!(statuses(&raw), [status], "{headers}: {raw}");
        assert!(
            raw.ends_with(&format!(r#"{{"error":"{error}"}}"#)),
            "{headers}: {raw}"
        );
    }
    assert_eq!(app.status_on_disk("evt_dup").await, None);

    // The control: one line of each is accepted and forwarded as that line.
    let raw = exchange(
        port,
        &webhook(
            "evt_dup",
            "1.1",
            &format!("{}Connection: close\r\n", signed("evt_dup")),
        ),
    )
    .await;
    assert_eq!(statuses(&raw), [200], "{raw}");
    let received = app.sandbox.wait_for(1, Duration::from_secs(10)).await;
    let signatures: Vec<_> = received[0]
        .headers
        .iter()
        .filter(|(n, _)| n == "cko-signature")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(signatures, [good]);
    assert_eq!(app.sandbox.received().len(), 1);
    app.stop().await;
}

/// After an answer that closes the connection (the client's `Connection:
/// close`, a refusal, HTTP/1.0 without keep-alive) a pipelined request is
/// neither answered nor stored nor forwarded. Keep-alive pipelining, the
/// control, still answers and stores both.
#[tokio::test]
async fn nothing_after_a_closing_answer_is_processed() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let port = app.port();
    let cases: [(&str, Vec<u8>, u16); 3] = [
        (
            "connection close",
            webhook(
                "evt_first_1",
                "1.1",
                &format!("{}Connection: close\r\n", signed("evt_first_1")),
            ),
            200,
        ),
        (
            "refused with close",
            webhook(
                "evt_first_2",
                "1.1",
                "Authorization: wrong\r\nConnection: close\r\n",
            ),
            401,
        ),
        (
            "HTTP/1.0",
            webhook("evt_first_3", "1.0", &signed("evt_first_3")),
            200,
        ),
    ];
    for (i, (case, first, status)) in cases.into_iter().enumerate() {
        let after = format!("evt_after_{i}");
        let mut pipelined = first;
        pipelined.extend(webhook(&after, "1.1", &signed(&after)));
        let raw = exchange(port, &pipelined).await;
        assert_eq!(statuses(&raw), [status], "{case}: {raw}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(app.status_on_disk(&after).await, None, "{case}: stored");
    }

    let mut both = webhook("evt_ka_1", "1.1", &signed("evt_ka_1"));
    both.extend(webhook(
        "evt_ka_2",
        "1.1",
        &format!("{}Connection: close\r\n", signed("evt_ka_2")),
    ));
    let raw = exchange(port, &both).await;
    assert_eq!(statuses(&raw), [200, 200], "{raw}");
    for id in ["evt_ka_1", "evt_ka_2"] {
        assert!(app.status_on_disk(id).await.is_some(), "{id} not stored");
    }
    let sent = app.sandbox.wait_for(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids: Vec<_> = app.sandbox.event_ids();
    ids.sort();
    assert_eq!(
        ids,
        ["evt_first_1", "evt_first_3", "evt_ka_1", "evt_ka_2"],
        "{sent:?}"
    );
    app.stop().await;
}

/// The precise status for what the relay will not take: a request-target
/// over 64 KiB is 414, a method other than POST on a webhook path 405 with
/// `Allow: POST`, a transfer coding other than chunked 501; a
/// Transfer-Encoding beside a Content-Length stays 400. Each is counted.
#[tokio::test]
async fn edge_refusals_have_their_own_status() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let port = app.port();

    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let raw = exchange(port, long.as_bytes()).await;
    assert_eq!(statuses(&raw), [414], "{}", &raw[..raw.len().min(300)]);
    assert!(raw.ends_with(r#"{"error":"uri_too_long"}"#), "{raw}");

    // Just under the limit is an ordinary unknown path.
    let under = format!(
        "GET /{} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n",
        "a".repeat(60 * 1024)
    );
    assert_eq!(statuses(&exchange(port, under.as_bytes()).await), [404]);

    for path in [
        PATH,
        "/webhooks/checkoutdotcom",
        "/webhooks/checkoutdotcom/staging",
    ] {
        for method in ["GET", "PUT", "DELETE"] {
            let raw = exchange(
                port,
                format!("{method} {path} HTTP/1.1\r\nHost: relay\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await;
            assert_eq!(statuses(&raw), [405], "{method} {path}: {raw}");
            assert!(
                raw.to_ascii_lowercase().contains("\r\nallow: post\r\n"),
                "{raw}"
            );
        }
    }

    let body = approved_event("evt_gzip");
    let chunked = format!(
        "POST {PATH} HTTP/1.1\r\nHost: relay\r\n{}Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        signed("evt_gzip"),
        body.len(),
        String::from_utf8_lossy(&body)
    );
    let raw = exchange(port, chunked.as_bytes()).await;
    assert_eq!(statuses(&raw), [501], "{raw}");
    assert!(raw.ends_with(r#"{"error":"not_implemented"}"#), "{raw}");

    let smuggled = format!(
        "POST {PATH} HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\nConnection: close\r\n\r\n0\r\n\r\n"
    );
    assert_eq!(statuses(&exchange(port, smuggled.as_bytes()).await), [400]);
    assert_eq!(app.status_on_disk("evt_gzip").await, None);

    let metrics = app.metrics_text().await;
    for (result, n) in [
        ("uri_too_long", 1),
        ("method_not_allowed", 9),
        ("not_implemented", 1),
    ] {
        let line = format!(
            "accelerate_relay_webhooks_total{{environment=\"none\",result=\"{result}\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line} not in metrics");
    }
    app.stop().await;
}
