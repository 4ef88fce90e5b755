//! The relay's connections, for what actix-http does not do itself:
//!
//! - Requests its parser refuses before any handler runs are answered like
//!   every other refusal: a JSON body, one log line, a count in the metrics.
//!   The parser answers them itself (431 for a head over 128 KiB or with more
//!   than 96 header lines, 408 when the head does not arrive within the header
//!   timeout, 400 when it does not parse), with an empty body, and then closes
//!   the connection; no hook of actix-web sees them. Every response the relay
//!   writes through its handlers has a body, so an empty-bodied 400, 408 or 431
//!   at the start of a write can only be one of those, and is replaced here;
//!   a 400 for a request-target over the `http` crate's 64 KiB is a 414, and
//!   one for a transfer coding other than chunked a 501 (RFC 9112 §6.1).
//! - An answer that closes the connection is its last (RFC 9112 §9.6):
//!   actix-http parses pipelined requests ahead and would run them after it.
//!   [`LastAnswer`] stops them before any handler runs, and the connection
//!   reads and writes nothing once that answer is out.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use actix_http::ConnectionType;
use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::rt::net::TcpStream;
use actix_web::HttpResponse;
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::webhook::WebhookResult;
use crate::metrics::Metrics;

/// The bytes under a connection: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_flush(cx),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection to the webhook port or the admin port.
pub struct Connection {
    io: Stream,
    peer: Option<SocketAddr>,
    /// Where the parser's refusals are counted: the webhook port's only.
    metrics: Option<Arc<Metrics>>,
    /// Our answer to a parser refusal, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
    /// Shared with every request of this connection (as actix's connection data).
    last: Arc<LastAnswer>,
    /// What was read since the relay last wrote, to tell why the parser refused.
    seen: Seen,
}

impl Connection {
    pub fn new(io: Stream, peer: Option<SocketAddr>, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            io,
            peer,
            metrics,
            replacement: None,
            last: Arc::default(),
            seen: Seen::default(),
        }
    }

    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// For `on_connect_ext`: what [`last_answer`] reads of this connection.
    pub fn last_answer(&self) -> Arc<LastAnswer> {
        Arc::clone(&self.last)
    }

    /// Writes what is left of the replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, written)) = &mut self.replacement {
            if *written == answer.len() {
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// Whether this connection's last answer is decided and whether it is out.
#[derive(Default)]
pub struct LastAnswer {
    /// The answer being written closes the connection.
    decided: AtomicBool,
    /// It is written and flushed: nothing more is read or written.
    out: AtomicBool,
    written: Notify,
}

impl LastAnswer {
    /// Waits (bounded) until the last answer is out, so a request queued
    /// behind it ends without its own answer reaching the client.
    async fn wait_out(&self) {
        let out = async {
            loop {
                let written = self.written.notified();
                if self.out.load(Ordering::Acquire) {
                    return;
                }
                written.await;
            }
        };
        let _ = tokio::time::timeout(LAST_ANSWER_WAIT, out).await;
    }
}

/// How long a request queued behind a closing answer waits for it to be written.
const LAST_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Middleware for both ports: a request that arrives on a connection whose
/// last answer is decided is never handled (its answer is never written, as
/// the connection writes nothing more), and an answer that closes the
/// connection (the handler's `Connection: close`, or a request that asked
/// for it, HTTP/1.0 without keep-alive included) is marked the last.
pub fn last_answer<S>(
    req: ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<BoxBody>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
{
    let last = req.conn_data::<Arc<LastAnswer>>().cloned();
    if let Some(last) = last.clone().filter(|l| l.decided.load(Ordering::Acquire)) {
        tracing::debug!(
            "a request after the connection's closing answer is not handled (RFC 9112 §9.6)"
        );
        return Either::Left(async move {
            last.wait_out().await;
            Ok(req.into_response(HttpResponse::ServiceUnavailable().finish()))
        });
    }
    let asked_to_close = req.head().connection_type() == ConnectionType::Close;
    let answer = service.call(req);
    Either::Right(async move {
        let mut res = answer.await?;
        let closes =
            asked_to_close || res.response().head().connection_type() == ConnectionType::Close;
        if let (true, Some(last)) = (closes, last) {
            res.response_mut()
                .head_mut()
                .set_connection_type(ConnectionType::Close);
            last.decided.store(true, Ordering::Release);
        }
        Ok(res)
    })
}

/// Line lengths and the start of what was read since the relay last wrote.
#[derive(Default)]
struct Seen {
    /// Bytes since the last line feed.
    line: usize,
    longest: usize,
    /// The first `HEAD_KEPT` bytes.
    head: Vec<u8>,
}

/// Enough of a request's head to read its request line and transfer coding.
const HEAD_KEPT: usize = 8 * 1024;
/// The longest request-target the `http` crate holds (`u16::MAX - 1`);
/// actix-http's parser refuses a longer one with an empty 400.
const LONGEST_TARGET: usize = u16::MAX as usize - 1;

impl Seen {
    fn read(&mut self, bytes: &[u8]) {
        match memchr::memrchr(b'\n', bytes) {
            Some(last) => {
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', bytes) {
                    self.longest = self.longest.max(self.line + end - start);
                    self.line = 0;
                    start = end + 1;
                }
                self.line = bytes.len() - last - 1;
            }
            None => self.line += bytes.len(),
        }
        self.longest = self.longest.max(self.line);
        let room = HEAD_KEPT.saturating_sub(self.head.len());
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn clear(&mut self) {
        self.line = 0;
        self.longest = 0;
        self.head.clear();
    }

    /// Why the parser refused with a 400, when it is something more precise.
    fn refusal(&self) -> Option<(u16, &'static str, WebhookResult)> {
        if self.longest >= LONGEST_TARGET {
            return Some((414, "URI Too Long", WebhookResult::UriTooLong));
        }
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut request = httparse::Request::new(&mut headers);
        request.parse(&self.head).ok()?;
        let mut codings = request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
        let only = codings.next()?;
        let content_length = request
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("content-length"));
        let unknown = std::str::from_utf8(only.value).ok()?.split(',').any(|c| {
            let c = c.trim();
            !c.eq_ignore_ascii_case("chunked") && !c.eq_ignore_ascii_case("identity")
        });
        // Two Transfer-Encoding lines, or one beside a Content-Length, stay a
        // 400: they are how requests are smuggled, not a coding we lack.
        (codings.next().is_none() && !content_length && request.version == Some(1) && unknown)
            .then_some((501, "Not Implemented", WebhookResult::NotImplemented))
    }
}

/// The parser's refusals, with the answer's result for the log and the metrics.
const REFUSALS: [(&[u8], u16, &str, WebhookResult); 3] = [
    (b"400", 400, "Bad Request", WebhookResult::BadRequest),
    (
        b"408",
        408,
        "Request Timeout",
        WebhookResult::RequestTimeout,
    ),
    (
        b"431",
        431,
        "Request Header Fields Too Large",
        WebhookResult::RequestHeaderFieldsTooLarge,
    ),
];

/// The refusal `buf` starts with, if it is one of the parser's: a status
/// line of 400, 408 or 431 and a head that says the body is empty and ends
/// the write. Cheap for ordinary responses: they fail on the status code.
fn parser_refusal(buf: &[u8]) -> Option<(u16, &'static str, WebhookResult)> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let (_, status, reason, result) = REFUSALS
        .iter()
        .find(|(digits, ..)| rest.starts_with(digits))?;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &buf[..head_end];
    let empty = head
        .windows(20)
        .any(|w| w.eq_ignore_ascii_case(b"\r\ncontent-length: 0\r"));
    (empty && head_end == buf.len()).then_some((*status, *reason, *result))
}

fn json_answer(status: u16, reason: &str, result: WebhookResult) -> Vec<u8> {
    let body = format!(r#"{{"error":"{}"}}"#, result.as_str());
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\ndate: {}\r\n\r\n{body}",
        body.len(),
        httpdate::fmt_http_date(SystemTime::now())
    )
    .into_bytes()
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.last.out.load(Ordering::Acquire) {
            // The last answer is out: the end of the stream, as far as the
            // parser is concerned.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.seen.read(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.last.out.load(Ordering::Acquire) {
            // Whatever actix writes after the last answer (the answer of a
            // request that was not handled) is dropped.
            return Poll::Ready(Ok(buf.len()));
        }
        if this.replacement.is_some() {
            // Nothing follows a refusal (the parser closes the connection);
            // should anything, it goes after our answer.
            ready!(this.poll_replacement(cx))?;
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        let Some((mut status, mut reason, mut result)) = parser_refusal(buf) else {
            this.seen.clear();
            return Pin::new(&mut this.io).poll_write(cx, buf);
        };
        if status == 400 {
            if let Some(precise) = this.seen.refusal() {
                (status, reason, result) = precise;
            }
        }
        let peer = this.peer.map(|p| p.ip());
        tracing::warn!(
            environment = "none", status, outcome = "rejected", reason = result.as_str(), peer = peer.map(tracing::field::display),
            "request refused by the HTTP parser (request-target over 64 KiB, head over 128 KiB or 96 lines, too slow, unknown transfer coding, or unreadable)"
        );
        if let Some(metrics) = &this.metrics {
            metrics.webhook(None, result, Duration::ZERO);
        }
        this.replacement = Some((json_answer(status, reason, result), 0));
        // The parser's bytes count as written: ours go in their place.
        match this.poll_replacement(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        // actix flushes only once its whole write buffer is written: a
        // closing answer decided before is out now.
        if this.last.decided.load(Ordering::Acquire) && !this.last.out.swap(true, Ordering::AcqRel)
        {
            this.last.written.notify_waiters();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_parsers_empty_refusals_are_recognised() {
        let canned = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\ndate: Wed, 25 Nov 2026 22:00:00 GMT\r\n\r\n";
        assert_eq!(
            parser_refusal(canned),
            Some((
                431,
                "Request Header Fields Too Large",
                WebhookResult::RequestHeaderFieldsTooLarge
            ))
        );
        let timeout = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parser_refusal(timeout).map(|r| r.0), Some(408));
        // The relay's own answers have a body: left alone.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 27\r\ncontent-type: application/json\r\n\r\n{\"error\":\"malformed_event\"}";
        assert_eq!(parser_refusal(ours), None);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parser_refusal(ok), None);
        // A content-length of 0 that is only a prefix (e.g. 0123) is not empty.
        let longer = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 01\r\n\r\n";
        assert_eq!(parser_refusal(longer), None);
    }
}
