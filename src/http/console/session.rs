//! The console's sign-in session: a signed, expiring cookie, and the CSRF
//! token its forms carry.
//!
//! Nothing is kept on the server. The signing key is derived from the admin
//! token, so every replica accepts the same session, a restart keeps it, and
//! changing `RELAY_ADMIN_TOKEN` signs everyone out.

use std::time::Duration;

use actix_web::http::header;
use actix_web::HttpRequest;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::secret::Secret;
use crate::store::Timestamp;

pub const COOKIE: &str = "relay_console";
/// How long a sign-in lasts: a working day, not longer.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
const PATH: &str = "/console";

type HmacSha256 = Hmac<Sha256>;

/// Issues and checks sessions with a key only the relay knows.
pub struct Sessions {
    key: [u8; 32],
    secure: bool,
}

/// A signed-in operator.
pub struct Session {
    nonce: String,
    csrf: String,
}

impl Sessions {
    pub fn new(admin_token: &Secret, secure: bool) -> Self {
        let mut mac = HmacSha256::new_from_slice(admin_token.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(b"accelerate-relay console session v1");
        Self {
            key: mac.finalize().into_bytes().into(),
            secure,
        }
    }

    /// A new session and the `Set-Cookie` value that carries it.
    pub fn start(&self, now: Timestamp) -> (Session, String) {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let expires = now.plus(LIFETIME).0;
        let payload = format!("v1.{expires}.{nonce}");
        let value = format!("{payload}.{}", hex::encode(self.sign(&payload)));
        let cookie = self.cookie(&value, LIFETIME.as_secs());
        (self.session(nonce), cookie)
    }

    /// The session the request's cookie proves, if it is ours and not expired.
    pub fn read(&self, req: &HttpRequest, now: Timestamp) -> Option<Session> {
        let value = req
            .headers()
            .get_all(header::COOKIE)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))?;
        let (payload, mac) = value.rsplit_once('.')?;
        let mut check = self.mac();
        check.update(payload.as_bytes());
        check.verify_slice(&hex::decode(mac).ok()?).ok()?;
        let mut parts = payload.split('.');
        let (Some("v1"), Some(expires), Some(nonce), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        (expires.parse::<i64>().ok()? > now.0).then(|| self.session(nonce.to_owned()))
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
        let mac = self.sign(&format!("notice.{}.{notice}", session.nonce));
        format!("{notice}.{}", hex::encode(&mac[..16]))
    }

    /// The notice `sealed` carries, when this session's seal is on it.
    pub fn open_notice<'a>(&self, session: &Session, sealed: &'a str) -> Option<&'a str> {
        let (notice, mac) = sealed.rsplit_once('.')?;
        let expected = self.sign(&format!("notice.{}.{notice}", session.nonce));
        let sent = hex::decode(mac).ok()?;
        (sent.len() == 16 && bool::from(expected[..16].ct_eq(&sent))).then_some(notice)
    }

    fn session(&self, nonce: String) -> Session {
        let csrf = hex::encode(self.sign(&format!("csrf.{nonce}")));
        Session { nonce, csrf }
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{COOKIE}={value}; Path={PATH}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
        )
    }

    fn sign(&self, payload: &str) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }
}

impl Session {
    /// What every form of this session carries in its `csrf` field.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether a form's `csrf` field is this session's, in constant time.
    pub fn accepts(&self, sent: Option<&str>) -> bool {
        sent.is_some_and(|sent| bool::from(self.csrf.as_bytes().ct_eq(sent.as_bytes())))
    }

    /// Short and not secret: which session did something, for the audit line.
    pub fn id(&self) -> &str {
        &self.nonce[..8]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn sent(cookie: &str) -> HttpRequest {
        let value = cookie.split(';').next().expect("name=value first");
        TestRequest::default()
            .insert_header((header::COOKIE, format!("other=1; {value}")))
            .to_http_request()
    }

    #[test]
    fn a_session_is_read_back_until_it_expires() {
        let sessions = Sessions::new(&Secret::new("admin-token"), true);
        let now = Timestamp(1_000_000);
        let (session, cookie) = sessions.start(now);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(cookie.contains("; Secure"));
        let read = sessions.read(&sent(&cookie), now).expect("valid session");
        assert_eq!(read.csrf(), session.csrf());
        assert!(read.accepts(Some(session.csrf())));
        assert!(!read.accepts(Some("0")) && !read.accepts(None));
        assert!(sessions.read(&sent(&cookie), now.plus(LIFETIME)).is_none());
    }

    #[test]
    fn a_changed_cookie_or_admin_token_is_no_session() {
        let sessions = Sessions::new(&Secret::new("admin-token"), false);
        let now = Timestamp(1_000_000);
        let (_, cookie) = sessions.start(now);
        assert!(!cookie.contains("Secure"));
        let later = cookie.replacen("v1.", "v1.9", 1);
        assert!(sessions.read(&sent(&later), now).is_none());
        let rotated = Sessions::new(&Secret::new("admin-token-2"), false);
        assert!(rotated.read(&sent(&cookie), now).is_none());
    }
}
