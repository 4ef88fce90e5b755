//! A mock Accelerate: a real HTTP server that records every request and answers
//! from a script (then a default), optionally after a delay.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;

#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// A status with a `Retry-After` header.
    RetryAfter(u16, String),
    /// Waits, then answers the status.
    Slow(Duration, u16),
}

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
    pub at: Instant,
    /// The status the mock answered it with.
    pub answered: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
    /// The Checkout.com event id of the forwarded body.
    pub fn event_id(&self) -> String {
        let event: serde_json::Value = serde_json::from_slice(&self.body).expect("json");
        event["id"].as_str().expect("id").to_owned()
    }
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
}

pub struct MockAccelerate {
    port: u16,
    state: Arc<State>,
}

impl MockAccelerate {
    pub async fn start() -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").expect("bind mock")).await
    }

    pub async fn start_on(listener: TcpListener) -> Self {
        let port = listener.local_addr().expect("mock address").port();
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::from(Arc::clone(&shared)))
                .default_service(web::to(handle))
        })
        .workers(2)
        .disable_signals()
        .listen(listener)
        .expect("mock listens")
        .run();
        // Runs until the test's runtime ends.
        tokio::spawn(server);
        MockAccelerate { port, state }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/checkoutdotcom", self.port)
    }

    /// The next answers, in order; after them, the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().expect("mock lock").extend(replies);
    }

    /// What to answer once the script is used up (200 unless set).
    pub fn set_default(&self, reply: Reply) {
        *self.state.default.lock().expect("mock lock") = Some(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("mock lock").clone()
    }

    /// The event ids of every request so far, in arrival order (repeats included).
    pub fn event_ids(&self) -> Vec<String> {
        self.received().iter().map(Received::event_id).collect()
    }

    /// Waits until at least `n` requests arrived; panics with what came if not.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let arrived = super::eventually(within, || async { self.received().len() >= n }).await;
        let received = self.received();
        assert!(
            arrived,
            "mock Accelerate expected {n} requests within {within:?}, got {}",
            received.len()
        );
        received
    }

    /// Waits for a request that `matches`; panics if none comes.
    pub async fn wait_until(
        &self,
        within: Duration,
        matches: impl Fn(&Received) -> bool,
    ) -> Received {
        let found = || self.received().into_iter().find(|r| matches(r));
        super::eventually(within, || async { found().is_some() }).await;
        found().unwrap_or_else(|| {
            panic!("mock Accelerate: the expected request did not come within {within:?}")
        })
    }
}

async fn handle(req: HttpRequest, body: Bytes, state: web::Data<State>) -> HttpResponse {
    let reply = state
        .script
        .lock()
        .expect("mock lock")
        .pop_front()
        .or_else(|| state.default.lock().expect("mock lock").clone())
        .unwrap_or(Reply::Status(200));
    let answered = match &reply {
        Reply::Status(s) | Reply::RetryAfter(s, _) | Reply::Slow(_, s) => *s,
    };
    state.received.lock().expect("mock lock").push(Received {
        path: req.path().to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        body,
        at: Instant::now(),
        answered,
    });
    let status = match reply {
        Reply::Status(s) => s,
        Reply::RetryAfter(s, value) => {
            return HttpResponse::build(status_code(s))
                .insert_header(("retry-after", value))
                .finish()
        }
        Reply::Slow(delay, s) => {
            tokio::time::sleep(delay).await;
            s
        }
    };
    HttpResponse::build(status_code(status)).body("{}")
}

fn status_code(s: u16) -> actix_web::http::StatusCode {
    actix_web::http::StatusCode::from_u16(s).expect("valid status")
}
