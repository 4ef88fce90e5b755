//! The webhook port's connections, so that requests actix-http's parser
//! refuses before any handler runs are answered like every other refusal:
//! a JSON body, one log line, a count in the metrics.
//!
//! The parser answers them itself (431 for a head over 128 KiB or with more
//! than 96 header lines, 408 when the head does not arrive within the header
//! timeout, 400 when it does not parse), with an empty body, and then closes
//! the connection; no hook of actix-web sees them. Every response the relay
//! writes through its handlers has a body, so an empty-bodied 400, 408 or 431
//! at the start of a write can only be one of those, and is replaced here.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use actix_web::rt::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::Metrics;

/// A connection to the webhook port.
pub struct Connection {
    io: TcpStream,
    peer: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    /// Our answer to a parser refusal, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl Connection {
    pub fn new(io: TcpStream, metrics: Arc<Metrics>) -> Self {
        let peer = io.peer_addr().ok();
        Self {
            io,
            peer,
            metrics,
            replacement: None,
        }
    }

    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
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

/// The parser's refusals, with the answer's code for the log and the metrics.
const REFUSALS: [(&[u8], u16, &str, &str); 3] = [
    (b"400", 400, "Bad Request", "bad_request"),
    (b"408", 408, "Request Timeout", "request_timeout"),
    (
        b"431",
        431,
        "Request Header Fields Too Large",
        "request_header_fields_too_large",
    ),
];

/// The refusal `buf` starts with, if it is one of the parser's: a status
/// line of 400, 408 or 431 and a head that says the body is empty and ends
/// the write. Cheap for ordinary responses: they fail on the status code.
fn parser_refusal(buf: &[u8]) -> Option<(u16, &'static str, &'static str)> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let (_, status, reason, code) = REFUSALS
        .iter()
        .find(|(digits, ..)| rest.starts_with(digits))?;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &buf[..head_end];
    let empty = head
        .windows(20)
        .any(|w| w.eq_ignore_ascii_case(b"\r\ncontent-length: 0\r"));
    (empty && head_end == buf.len()).then_some((*status, *reason, *code))
}

fn json_answer(status: u16, reason: &str, code: &str) -> Vec<u8> {
    let body = format!(r#"{{"error":"{code}"}}"#);
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
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacement.is_some() {
            // Nothing follows a refusal (the parser closes the connection);
            // should anything, it goes after our answer.
            ready!(this.poll_replacement(cx))?;
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        let Some((status, reason, code)) = parser_refusal(buf) else {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        };
        tracing::warn!(
            environment = "none", status, outcome = "rejected", reason = code, peer = ?this.peer.map(|p| p.ip()),
            "webhook refused by the HTTP parser (head over 128 KiB or 96 lines, too slow, or unreadable)"
        );
        this.metrics.webhook(None, code, Duration::ZERO);
        this.replacement = Some((json_answer(status, reason, code), 0));
        // The parser's bytes count as written: ours go in their place.
        match this.poll_replacement(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
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
                "request_header_fields_too_large"
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
