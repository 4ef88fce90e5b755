//! Who may operate: the admin token checked (the `Bearer` scheme in any case,
//! every configured token compared in constant time), and wrong guesses
//! throttled per client address.
//!
//! The throttle is in memory, per replica: an attacker's guesses cost a map
//! lookup and never reach the store or the webhook path. A fleet of N
//! replicas lets an address try N times as often, which the token's length
//! (at least 32 characters, `config::ADMIN_TOKEN_MIN_CHARS`) leaves harmless.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};

use super::admin::AdminError;
use super::AppState;
use crate::config::Config;
use crate::metrics::{Metrics, Refusal};
use crate::secret::KeyRing;

/// Wrong tokens an address may send within `WINDOW` before it must wait.
pub const FAILURES: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
/// How long an address that used up its failures is refused, whatever it sends.
pub const LOCKOUT: Duration = Duration::from_secs(60);
/// Addresses tracked at most; beyond, the stalest entry is forgotten.
const TRACKED: usize = 65_536;

/// Failures per client address (an IPv6 client by its /64, which one host
/// usually holds whole).
pub struct Throttle {
    clients: Mutex<HashMap<IpAddr, Entry>>,
    metrics: Arc<Metrics>,
}

struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

impl Entry {
    fn stale(&self, now: Instant) -> bool {
        now.duration_since(self.window_start) >= WINDOW
            && self.blocked_until.is_none_or(|until| until <= now)
    }
}

impl Throttle {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// `Err(wait)` while `client` is locked out: the request is refused
    /// before its token is even compared, so a lockout tells nothing.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        match clients.get(&key(client)).and_then(|e| e.blocked_until) {
            Some(until) if until > now => {
                drop(clients);
                self.metrics.admin_refused(Refusal::Throttled);
                Err(until - now)
            }
            _ => Ok(()),
        }
    }

    /// A wrong or missing token from `client`. Logged once per address and
    /// window (the first failure), and once more when it is locked out.
    pub fn failed(&self, client: IpAddr, what: &'static str) {
        self.metrics.admin_refused(Refusal::WrongToken);
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= TRACKED && !clients.contains_key(&key(client)) {
            forget_stalest(&mut clients, now);
        }
        let entry = clients.entry(key(client)).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if now.duration_since(entry.window_start) >= WINDOW {
            entry.window_start = now;
            entry.failures = 0;
        }
        entry.failures += 1;
        if entry.failures == 1 {
            tracing::warn!(
                peer = %client,
                what,
                outcome = "refused",
                "a wrong or missing admin token; further ones from this address within {} s are counted, not logged",
                WINDOW.as_secs()
            );
        }
        if entry.failures >= FAILURES {
            let until = now + LOCKOUT;
            entry.blocked_until = Some(until);
            // The next window starts when the lockout ends.
            entry.window_start = until;
            entry.failures = 0;
            tracing::warn!(
                peer = %client,
                what,
                outcome = "throttled",
                "{FAILURES} wrong admin tokens from this address within {} s: it is refused (429) for {} s",
                WINDOW.as_secs(),
                LOCKOUT.as_secs()
            );
        }
    }

    /// A right token: the address's failures are forgotten.
    pub fn succeeded(&self, client: IpAddr) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.remove(&key(client));
    }
}

fn forget_stalest(clients: &mut HashMap<IpAddr, Entry>, now: Instant) {
    clients.retain(|_, e| !e.stale(now));
    if clients.len() >= TRACKED {
        if let Some(oldest) = clients
            .iter()
            .min_by_key(|(_, e)| e.window_start)
            .map(|(ip, _)| *ip)
        {
            clients.remove(&oldest);
        }
    }
}

/// An address as the throttle counts it.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

/// The client a request came from: the peer, or behind a proxy listed in
/// `RELAY_TRUSTED_PROXIES`, the address it forwarded for.
pub fn client(req: &HttpRequest, config: &Config) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    Some(match &config.sources {
        Some(policy) => {
            let forwarded = req
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok());
            policy.client(peer, forwarded)
        }
        None => peer,
    })
}

/// The token of an `Authorization: Bearer …` value; the scheme is
/// case-insensitive (RFC 9110 §11.1), and spaces around the token are not
/// part of it.
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, token) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Which configured token `sent` is, after the throttle let the client try.
/// `Err(None)`: wrong; `Err(Some(wait))`: locked out.
pub fn admit(
    throttle: &Throttle,
    tokens: &KeyRing,
    client: Option<IpAddr>,
    sent: Option<&[u8]>,
    what: &'static str,
) -> Result<usize, Option<Duration>> {
    if let Some(client) = client {
        throttle.check(client).map_err(Some)?;
    }
    match sent.and_then(|sent| tokens.position(sent)) {
        Some(index) => {
            if let Some(client) = client {
                throttle.succeeded(client);
            }
            Ok(index)
        }
        None => {
            match client {
                Some(client) => throttle.failed(client, what),
                None => throttle.metrics.admin_refused(Refusal::WrongToken),
            }
            Err(None)
        }
    }
}

/// Proof that a request carried a configured admin token. Every admin API
/// handler takes one, so none can be written without the check.
pub struct Operator;

impl FromRequest for Operator {
    type Error = AdminError;
    type Future = Ready<Result<Self, AdminError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(authorize(req))
    }
}

fn authorize(req: &HttpRequest) -> Result<Operator, AdminError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("the app state is registered on every app");
    let tokens = state
        .config
        .admin_token
        .as_ref()
        .ok_or(AdminError::Unauthorized)?;
    // Two Authorization lines are no proof of either.
    let mut lines = req.headers().get_all(header::AUTHORIZATION);
    let sent = match (lines.next(), lines.next()) {
        (Some(one), None) => bearer(one.as_bytes()),
        _ => None,
    };
    let client = client(req, &state.config);
    match admit(&state.throttle, tokens, client, sent, "admin API") {
        Ok(_) => Ok(Operator),
        Err(Some(wait)) => Err(AdminError::Throttled(wait)),
        Err(None) => Err(AdminError::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Bearer "), None);
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn an_address_waits_after_its_failures_and_others_do_not() {
        let throttle = Throttle::new(Metrics::new());
        let guesser: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..FAILURES - 1 {
            throttle.failed(guesser, "test");
            assert!(throttle.check(guesser).is_ok());
        }
        throttle.failed(guesser, "test");
        let wait = throttle.check(guesser).expect_err("locked out");
        assert!(wait <= LOCKOUT && wait > LOCKOUT - Duration::from_secs(5));
        assert!(throttle.check(other).is_ok());
    }
}
