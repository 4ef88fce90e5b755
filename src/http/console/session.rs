//! The console's sign-in session: a cookie naming a session the server
//! keeps (`store::StoredSession`), and the CSRF token its forms carry.
//!
//! The cookie holds the session's id and a random secret; the store holds
//! the secret's SHA-256 only. Signing out or revoking ends the row, so the
//! cookie stops working on every replica at once; removing an admin token
//! from `RELAY_ADMIN_TOKEN` ends the sessions signed in with it.

use std::net::IpAddr;
use std::time::Duration;

use actix_web::http::header;
use actix_web::HttpRequest;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::{KeyRing, Secret};
use crate::store::{Store, StoreError, StoredSession, Timestamp};

pub const COOKIE: &str = "relay_console";
/// How long a sign-in lasts: a working day, not longer.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
const PATH: &str = "/console";
const PREFIX: &str = "ses_";

type HmacSha256 = Hmac<Sha256>;

/// Issues sessions and reads them back from the store.
pub struct Sessions {
    /// SHA-256 of each configured admin token, in the configured order.
    tokens: Vec<String>,
    secure: bool,
}

/// A signed-in operator.
pub struct Session {
    id: String,
    secret: String,
    csrf: String,
}

impl Sessions {
    pub fn new(tokens: &KeyRing, secure: bool) -> Self {
        Self {
            tokens: tokens.iter().map(token_hash).collect(),
            secure,
        }
    }

    /// A new session, committed, for the admin token at `token` in the
    /// configured list, and the `Set-Cookie` value that carries it.
    pub async fn start(
        &self,
        store: &Store,
        token: usize,
        peer: Option<IpAddr>,
        now: Timestamp,
    ) -> Result<(Session, String), StoreError> {
        let id = format!("{PREFIX}{}", hex::encode(rand::random::<[u8; 8]>()));
        let secret = hex::encode(rand::random::<[u8; 16]>());
        store
            .create_session(&StoredSession {
                id: id.clone(),
                secret_hash: sha256_hex(secret.as_bytes()),
                token_hash: self.tokens[token].clone(),
                peer: peer.map(|p| p.to_string()),
                created_at: now,
                expires_at: now.plus(LIFETIME),
                ended_at: None,
                ended_by: None,
            })
            .await?;
        let cookie = self.cookie(&format!("v2.{id}.{secret}"), LIFETIME.as_secs());
        Ok((Session::new(id, secret), cookie))
    }

    /// The session the request's cookie names, if the store has it active,
    /// its secret matches, and the token it signed in with is still configured.
    pub async fn read(
        &self,
        req: &HttpRequest,
        store: &Store,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        let Some((id, secret)) = cookie_of(req) else {
            return Ok(None);
        };
        let Some(stored) = store.session(id).await? else {
            return Ok(None);
        };
        let secret_ok: bool = sha256_hex(secret.as_bytes())
            .as_bytes()
            .ct_eq(stored.secret_hash.as_bytes())
            .into();
        let token_ok = self.tokens.contains(&stored.token_hash);
        Ok((secret_ok && token_ok && stored.active(now))
            .then(|| Session::new(stored.id, secret.to_owned())))
    }

    /// Whether the cookie is marked `Secure` (HTTPS only, but for localhost).
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// The `Set-Cookie` value that removes the session from the browser.
    pub fn end(&self) -> String {
        self.cookie("", 0)
    }

    /// A notice for a redirect's URL, sealed to this session: the page
    /// shows only a notice the relay itself wrote for it (a count in a
    /// crafted link would otherwise be shown as if the relay had said it).
    pub fn seal_notice(&self, session: &Session, notice: &str) -> String {
        let mac = session.sign(&format!("notice.{notice}"));
        format!("{notice}.{}", hex::encode(&mac[..16]))
    }

    /// The notice `sealed` carries, when this session's seal is on it.
    pub fn open_notice<'a>(&self, session: &Session, sealed: &'a str) -> Option<&'a str> {
        let (notice, mac) = sealed.rsplit_once('.')?;
        let expected = session.sign(&format!("notice.{notice}"));
        let sent = hex::decode(mac).ok()?;
        (sent.len() == 16 && bool::from(expected[..16].ct_eq(&sent))).then_some(notice)
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{COOKIE}={value}; Path={PATH}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
        )
    }
}

/// `v2.<id>.<secret>` from the request's cookie, if it has that shape.
fn cookie_of(req: &HttpRequest) -> Option<(&str, &str)> {
    let value = req
        .headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))?;
    let (id, secret) = value.strip_prefix("v2.")?.split_once('.')?;
    parse_id(id).ok()?;
    Some((id, secret))
}

/// A session id as the relay prints it: `ses_` and 16 lower-case hex digits.
pub fn parse_id(value: &str) -> Result<&str, String> {
    value
        .strip_prefix(PREFIX)
        .filter(|hex| {
            hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
        .map(|_| value)
        .ok_or_else(|| format!("`{value}` is not a session id (ses_ and 16 hex digits)"))
}

/// Which admin token a session signed in with, without keeping the token.
fn token_hash(token: &Secret) -> String {
    sha256_hex(format!("accelerate-relay admin token v1:{}", token.expose()).as_bytes())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Session {
    fn new(id: String, secret: String) -> Self {
        let mut session = Self {
            id,
            secret,
            csrf: String::new(),
        };
        session.csrf = hex::encode(session.sign("csrf"));
        session
    }

    /// What every form of this session carries in its `csrf` field.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether a form's `csrf` field is this session's, in constant time.
    pub fn accepts(&self, sent: Option<&str>) -> bool {
        sent.is_some_and(|sent| bool::from(self.csrf.as_bytes().ct_eq(sent.as_bytes())))
    }

    /// Not secret: which session did something, for audit lines and the list.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Keyed with the session's own secret: only this session's pages can
    /// carry its CSRF token or its notices.
    fn sign(&self, payload: &str) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(self.secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn sent(value: &str) -> HttpRequest {
        TestRequest::default()
            .insert_header((header::COOKIE, format!("other=1; {COOKIE}={value}")))
            .to_http_request()
    }

    #[test]
    fn only_a_well_formed_cookie_names_a_session() {
        let id = "ses_0123456789abcdef";
        assert_eq!(
            cookie_of(&sent(&format!("v2.{id}.s3cret"))),
            Some((id, "s3cret"))
        );
        assert_eq!(cookie_of(&sent(&format!("v1.{id}.s3cret"))), None);
        assert_eq!(cookie_of(&sent("v2.ses_0123.s3cret")), None);
        assert_eq!(cookie_of(&sent(&format!("v2.{id}"))), None);
        assert!(parse_id("ses_0123456789ABCDEF").is_err());
        assert!(parse_id("0123456789abcdef").is_err());
    }

    #[test]
    fn csrf_tokens_and_notices_belong_to_one_session() {
        let a = Session::new("ses_0000000000000001".into(), "secret-a".into());
        let b = Session::new("ses_0000000000000001".into(), "secret-b".into());
        assert!(a.accepts(Some(a.csrf())));
        assert!(!a.accepts(Some(b.csrf())) && !a.accepts(None));
        let sessions = Sessions::new(&KeyRing::parse("x").expect("a token"), false);
        let sealed = sessions.seal_notice(&a, "retried");
        assert_eq!(sessions.open_notice(&a, &sealed), Some("retried"));
        assert_eq!(sessions.open_notice(&b, &sealed), None);
    }
}
