//! Hostile HTTP: each gets a clear 4xx, nothing is stored, and the relay keeps
//! answering real webhooks meanwhile.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PATH: &str = "/webhooks/checkoutdotcom/sandbox";

/// Writes raw bytes and returns the status code of the first answer (0 if the
/// connection closed without one).
async fn raw(port: u16, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let _ = stream.write_all(request).await;
    let _ = stream.shutdown().await;
    status_of(&mut stream).await
}

async fn status_of(stream: &mut TcpStream) -> u16 {
    answer_of(stream).await.0
}

/// The status code and body of the answer read until the relay closes.
async fn answer_of(stream: &mut TcpStream) -> (u16, String) {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    (status, body)
}

/// Every request the HTTP parser refuses before any handler runs (too many
/// header lines, a head too big, too slow or unreadable) gets the relay's
/// JSON answer, one log line and a count, like every other refusal.
#[tokio::test]
async fn the_parsers_refusals_get_a_json_body_and_are_counted() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let port = app.port();
    let body = approved_event("evt_parser");
    let send = |request: Vec<u8>| async move {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let _ = stream.write_all(&request).await;
        answer_of(&mut stream).await
    };

    // 97 header lines (6 of the request, 91 more; actix-http takes 96).
    let many: String = (0..91).map(|i| format!("X-Extra-{i}: {i}\r\n")).collect();
    let (status, answer) = send(signed_request(&body, &many, body.len())).await;
    assert_eq!(
        (status, answer.as_str()),
        (431, r#"{"error":"request_header_fields_too_large"}"#)
    );
    // 96 are fine.
    let fewer: String = (0..90).map(|i| format!("X-Extra-{i}: {i}\r\n")).collect();
    assert_eq!(send(signed_request(&body, &fewer, body.len())).await.0, 200);
    // A head over 128 KiB.
    let huge = format!("X-Huge: {}\r\n", "a".repeat(200 * 1024));
    let (status, answer) = send(signed_request(&body, &huge, body.len())).await;
    assert_eq!(
        (status, answer.as_str()),
        (431, r#"{"error":"request_header_fields_too_large"}"#)
    );
    // A head that does not parse.
    let (status, answer) =
        send(b"POST /webhooks/checkoutdotcom/sandbox HTTP/1.1\r\nBad Header\r\n\r\n".to_vec())
            .await;
    assert_eq!(
        (status, answer.as_str()),
        (400, r#"{"error":"bad_request"}"#)
    );
    // A head that does not arrive within 5 s.
    let (status, answer) =
        send(b"POST /webhooks/checkoutdotcom/sandbox HTTP/1.1\r\nHost: r".to_vec()).await;
    assert_eq!(
        (status, answer.as_str()),
        (408, r#"{"error":"request_timeout"}"#)
    );

    let metrics = app.metrics_text().await;
    for (result, n) in [
        ("request_header_fields_too_large", 2),
        ("bad_request", 1),
        ("request_timeout", 1),
    ] {
        let line = format!(
            "accelerate_relay_webhooks_total{{environment=\"none\",result=\"{result}\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    assert_eq!(
        app.db.count().await,
        1,
        "only the request within the limits is stored"
    );
    app.stop().await;
}

fn signed_request(body: &[u8], extra_headers: &str, content_length: usize) -> Vec<u8> {
    let mut request = format!(
        "POST {PATH} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n\
         Authorization: {SANDBOX_AUTH}\r\nCko-Signature: {}\r\n{extra_headers}Content-Length: {content_length}\r\nConnection: close\r\n\r\n",
        sign(SANDBOX_SIG, body)
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// A real webhook still gets its answer quickly.
async fn assert_responsive(app: &TestApp, id: &str) {
    let started = Instant::now();
    let (status, body) = app.send_json("sandbox", approved_event(id)).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("accepted")));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_slow_clients_do_not_stop_real_webhooks() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let port = app.port();
    let mut trickling = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        // Half trickle their headers, half send headers and trickle the body.
        let start: Vec<u8> = if i % 2 == 0 {
            format!("POST {PATH} HTTP/1.1\r\nHost: relay\r\n").into_bytes()
        } else {
            signed_request(b"", "", 1000)
        };
        stream.write_all(&start).await.expect("write");
        trickling.push(tokio::spawn(async move {
            for _ in 0..200 {
                if stream.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            status_of(&mut stream).await
        }));
    }
    for i in 0..5 {
        assert_responsive(&app, &format!("evt_live{i}")).await;
    }
    // The relay cuts them off: headers within 5 s, bodies within 10 s.
    let mut statuses = Vec::new();
    for task in trickling {
        statuses.push(task.await.expect("task"));
    }
    assert!(
        statuses.iter().all(|s| *s == 0 || (400..500).contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&408), "slow bodies get 408");
    assert_eq!(app.db.count().await, 5, "only the real webhooks are stored");
    app.stop().await;
}

#[tokio::test]
async fn malformed_http_gets_a_4xx_and_nothing_is_stored() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let port = app.port();
    let body = approved_event("evt_hostile");

    // A request head over 128 KiB (actix-http's limit).
    let huge = format!("X-Huge: {}\r\n", "a".repeat(200 * 1024));
    let status = raw(port, &signed_request(&body, &huge, body.len())).await;
    assert_eq!(status, 431, "oversized header");

    // Content-Length shorter than the body: the signature no longer matches.
    let status = raw(port, &signed_request(&body, "", body.len() - 10)).await;
    assert_eq!(status, 401, "short Content-Length");

    // Content-Length longer than what is sent before the client stops writing.
    let status = raw(port, &signed_request(&body, "", body.len() + 100)).await;
    assert!(
        (400..500).contains(&status),
        "long Content-Length: {status}"
    );

    // Two Content-Lengths that disagree.
    let status = raw(
        port,
        &signed_request(&body, "Content-Length: 3\r\n", body.len()),
    )
    .await;
    assert_eq!(status, 400, "conflicting Content-Length");

    // Broken chunked encoding.
    let mut chunked = format!(
        "POST {PATH} HTTP/1.1\r\nHost: relay\r\nAuthorization: {SANDBOX_AUTH}\r\nCko-Signature: {}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        sign(SANDBOX_SIG, &body)
    )
    .into_bytes();
    chunked.extend_from_slice(&body);
    let status = raw(port, &chunked).await;
    assert_eq!(status, 400, "broken chunked body");

    // Chunked body over the limit, in many small chunks.
    let mut request = format!(
        "POST {PATH} HTTP/1.1\r\nHost: relay\r\nAuthorization: {SANDBOX_AUTH}\r\nCko-Signature: 00\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..300 {
        request.extend_from_slice(b"400\r\n");
        request.extend(std::iter::repeat_n(b' ', 0x400));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(port, &request).await, 413, "chunked over the limit");

    assert_responsive(&app, "evt_after_http").await;
    assert_eq!(app.db.count().await, 1, "only the real webhook is stored");
    app.stop().await;
}

#[tokio::test]
async fn hostile_json_that_is_correctly_signed_is_400_and_not_stored() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = r#""metadata":{"AccelerateToken":"tok_acc_hostile_0123456789"}"#;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "nested 10,000 deep",
            format!(
                r#"{{"id":"evt_h1","type":"payment_approved","data":{{{token},"x":{}{}}}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            )
            .into_bytes(),
        ),
        (
            "10,000-digit number",
            format!(
                r#"{{"id":"evt_h2","type":"payment_approved","data":{{{token},"amount":{}}}}}"#,
                "7".repeat(10_000)
            )
            .into_bytes(),
        ),
        (
            "id twice",
            format!(
                r#"{{"id":"evt_h3","id":"evt_h3b","type":"payment_approved","data":{{{token}}}}}"#
            )
            .into_bytes(),
        ),
        (
            "invalid UTF-8",
            [
                br#"{"id":"evt_h4","type":"payment_approved","data":{"#.as_slice(),
                token.as_bytes(),
                b",\"name\":\"\xc3\x28\"}}",
            ]
            .concat(),
        ),
        (
            "truncated",
            format!(r#"{{"id":"evt_h5","type":"payment_approved","data":{{{token}"#).into_bytes(),
        ),
    ];
    for (what, body) in cases {
        let (status, answer_body) = app.send_json("sandbox", body).await;
        assert_eq!(status, 400, "{what}");
        assert_eq!(answer_body["error"], "malformed_event", "{what}");
    }
    assert_responsive(&app, "evt_after_json").await;
    assert_eq!(app.db.count().await, 1, "only the real webhook is stored");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.sandbox.received().len(),
        1,
        "nothing hostile reached Accelerate"
    );
    app.stop().await;
}

/// Each of `forwarded_for` is sent as an `X-Forwarded-For` line of its own.
async fn post_from(app: &TestApp, forwarded_for: &[&str], id: &str) -> u16 {
    let body = approved_event(id);
    let mut request = app
        .client
        .post(format!("{}{PATH}", app.address))
        .header("authorization", SANDBOX_AUTH)
        .header("cko-signature", sign(SANDBOX_SIG, &body))
        .body(body);
    for line in forwarded_for {
        request = request.header("x-forwarded-for", *line);
    }
    request.send().await.expect("answer").status().as_u16()
}

#[tokio::test]
async fn source_allowlist_refuses_other_addresses_with_403() {
    let app =
        TestApp::spawn_with(Backend::Sqlite, &[("RELAY_ALLOWED_SOURCES", "10.0.0.0/8")]).await;
    let response = app.send("sandbox", approved_event("evt_src1")).await;
    assert_eq!(response.status().as_u16(), 403);
    let (_, body) = answer(response).await;
    assert_eq!(body, serde_json::json!({"error": "forbidden_source"}));
    // Without a trusted proxy, X-Forwarded-For is not believed.
    assert_eq!(post_from(&app, &["10.1.2.3"], "evt_src2").await, 403);
    assert_eq!(app.db.count().await, 0);
    app.stop().await;

    let app = TestApp::spawn_with(Backend::Sqlite, &[("RELAY_ALLOWED_SOURCES", "127.0.0.1")]).await;
    assert_eq!(post_from(&app, &[], "evt_src3").await, 200);
    app.stop().await;
}

#[tokio::test]
async fn forwarded_for_counts_only_behind_a_trusted_proxy() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("RELAY_ALLOWED_SOURCES", "203.0.113.0/24"),
            ("RELAY_TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    )
    .await;
    assert_eq!(post_from(&app, &["203.0.113.7"], "evt_p1").await, 200);
    assert_eq!(post_from(&app, &["198.51.100.1"], "evt_p2").await, 403);
    // A client cannot prepend an allowed address to its own.
    assert_eq!(
        post_from(&app, &["203.0.113.7, 198.51.100.1"], "evt_p3").await,
        403
    );
    // Nor with two lines, as when a proxy appends a line of its own
    // (HAProxy's `option forwardfor`): the lines are one list, in order.
    assert_eq!(
        post_from(&app, &["203.0.113.7", "198.51.100.1"], "evt_p5").await,
        403
    );
    assert_eq!(
        post_from(&app, &["198.51.100.1", "203.0.113.8"], "evt_p6").await,
        200
    );
    assert_eq!(post_from(&app, &[], "evt_p4").await, 403);
    assert_eq!(app.db.count().await, 2);
    // Probes are not subject to the allowlist.
    let health = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .expect("answer");
    assert_eq!(health.status().as_u16(), 200);
    app.stop().await;
}
