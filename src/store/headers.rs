//! The request headers as stored for the forward: every header as
//! received but the Authorization value, which is stored as a reference to
//! the configured key it was.

use bytes::Bytes;

use crate::verify::{Credentials, KeyRef};

/// The request headers forwarded to Accelerate, exactly as received, but for
/// the Authorization value: in its place, which configured key it was.
///
/// Stored as `name:value\n` lines of raw bytes: header values cannot hold a
/// newline, and bytes (not strings) keep any value unchanged. A key reference
/// is the line `=name:reference`: `=` cannot begin a header name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardHeaders(Vec<(String, Forward)>);

/// What stored headers hold of an Authorization value in clear (rows a
/// release before 0005 wrote), and what they become.
pub(super) enum HeldKey {
    Nothing,
    /// The new headers, with a key reference in its place.
    Replaced(Vec<u8>),
    /// Held, but the row's environment has no keys configured now.
    NoKeys,
}

/// One forwarded header's value as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forward {
    Bytes(Bytes),
    /// The configured key the value was (see `verify::KeyRef`).
    Key(KeyRef),
}

impl ForwardHeaders {
    pub fn push(&mut self, name: &str, value: &[u8]) {
        self.0.push((
            name.to_ascii_lowercase(),
            Forward::Bytes(Bytes::copy_from_slice(value)),
        ));
    }

    pub fn push_key(&mut self, name: &str, key: KeyRef) {
        self.0.push((name.to_ascii_lowercase(), Forward::Key(key)));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Forward)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Whether an Authorization value is here in clear (a row from before
    /// key references, not yet converted).
    pub fn holds_a_key(&self) -> bool {
        self.0
            .iter()
            .any(|(n, v)| n == "authorization" && matches!(v, Forward::Bytes(_)))
    }

    /// A stored headers value with an Authorization value held in clear
    /// replaced by a reference to `keys` (its environment's configured
    /// keys); `None` when `raw` is not stored headers.
    pub(super) fn replace_held_key(raw: &[u8], keys: Option<&Credentials>) -> Option<HeldKey> {
        let headers = Self::decode(raw)?;
        Some(match keys {
            _ if !headers.holds_a_key() => HeldKey::Nothing,
            Some(keys) => HeldKey::Replaced(
                headers
                    .without_keys(|value| keys.key_ref_of(value))
                    .encode(),
            ),
            None => HeldKey::NoKeys,
        })
    }

    /// The same headers with every Authorization value replaced by `key_ref`
    /// of it.
    pub fn without_keys(&self, key_ref: impl Fn(&[u8]) -> KeyRef) -> Self {
        let lines = self.0.iter().map(|(name, value)| {
            let value = match value {
                Forward::Bytes(v) if name == "authorization" => Forward::Key(key_ref(v)),
                other => other.clone(),
            };
            (name.clone(), value)
        });
        Self(lines.collect())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in &self.0 {
            match value {
                Forward::Bytes(value) => {
                    out.extend_from_slice(name.as_bytes());
                    out.push(b':');
                    out.extend_from_slice(value);
                }
                Forward::Key(key) => {
                    out.push(b'=');
                    out.extend_from_slice(name.as_bytes());
                    out.push(b':');
                    out.extend_from_slice(key.encode().as_bytes());
                }
            }
            out.push(b'\n');
        }
        out
    }

    pub fn decode(raw: &[u8]) -> Option<Self> {
        let mut headers = Self::default();
        for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let colon = line.iter().position(|b| *b == b':')?;
            let name = std::str::from_utf8(&line[..colon]).ok()?;
            let value = &line[colon + 1..];
            match name.strip_prefix('=') {
                Some(name) => headers.push_key(name, KeyRef::parse(value)?),
                None => headers.push(name, value),
            }
        }
        Some(headers)
    }
}
