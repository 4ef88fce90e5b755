//! Secrets that cannot be printed by accident and are compared in constant time.

use std::fmt;

use subtle::ConstantTimeEq;

/// A configured key (Authorization value, signature key, admin token).
///
/// There is no `Display`, and `Debug` prints a mask, so a secret cannot end up
/// in a log line or an error message through formatting.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into_boxed_str())
    }

    /// The raw value, for the few places that must use it (HMAC key, outgoing header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time equality with what a client sent. Only the length may leak,
    /// which `subtle` documents and which tells an attacker nothing useful.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(candidate).into()
    }

    /// What `check-config` may show: that it is set and how long it is.
    pub fn masked(&self) -> String {
        format!("<set, {} chars>", self.0.chars().count())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One or more secrets that are all valid at once, so a key can be rotated
/// without a window where Checkout.com's webhooks are refused.
#[derive(Clone, Debug)]
pub struct KeyRing(Vec<Secret>);

impl KeyRing {
    /// Splits a comma-separated value; `None` when it holds no key at all.
    pub fn parse(value: &str) -> Option<Self> {
        let keys: Vec<Secret> = value
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(Secret::new)
            .collect();
        (!keys.is_empty()).then_some(Self(keys))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.0.iter()
    }

    /// Where the matching key is in the list, if one matches. Every key is
    /// compared, so the time taken does not tell which key (or whether an
    /// early one) matched.
    pub fn position(&self, candidate: &[u8]) -> Option<usize> {
        self.0
            .iter()
            .enumerate()
            .fold(None, |found, (i, key)| match key.matches(candidate) {
                true => found.or(Some(i)),
                false => found,
            })
    }

    /// The key at `index`, if the list is that long.
    pub fn get(&self, index: usize) -> Option<&Secret> {
        self.0.get(index)
    }

    pub fn first(&self) -> &Secret {
        &self.0[0]
    }

    pub fn masked(&self) -> String {
        let keys: Vec<String> = self.0.iter().map(Secret::masked).collect();
        keys.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("sk_very_secret");
        assert!(!format!("{s:?}").contains("very_secret"));
        let ring = KeyRing::parse("abc123,def456").expect("two keys");
        assert!(!format!("{ring:?}").contains("abc123"));
        assert!(!ring.masked().contains("abc123"));
    }

    #[test]
    fn rotation_accepts_every_listed_key_and_nothing_else() {
        let ring = KeyRing::parse(" old , new ,").expect("keys");
        assert_eq!(ring.position(b"old"), Some(0));
        assert_eq!(ring.position(b"new"), Some(1));
        assert_eq!(ring.position(b"ol"), None);
        assert_eq!(ring.position(b"old,new"), None);
        assert_eq!(ring.position(b"ne"), None);
        assert!(KeyRing::parse(" , ").is_none());
    }
}
