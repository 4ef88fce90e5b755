//! Is this request really from Checkout.com? The `Authorization` header and the
//! `Cko-Signature` HMAC, both checked over the raw bytes in constant time.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::{KeyRing, Secret};

type HmacSha256 = Hmac<Sha256>;

/// The keys one environment accepts; several of each while a key is rotated.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub authorization: KeyRing,
    pub signature: KeyRing,
}

/// A body whose signature has been checked. Only [`verify`] makes one, so code
/// that takes a `VerifiedBody` cannot be handed unchecked bytes.
#[derive(Clone, Debug)]
pub struct VerifiedBody {
    body: Bytes,
    /// Which of the environment's Authorization keys the request carried.
    authorization: usize,
}

impl VerifiedBody {
    pub fn bytes(&self) -> &Bytes {
        &self.body
    }
    pub fn into_bytes(self) -> Bytes {
        self.body
    }
    pub fn authorization_index(&self) -> usize {
        self.authorization
    }
}

/// Which configured Authorization key an event arrived with, stored in its
/// place so the store never holds the key: the key's place in the list and a
/// fingerprint of it keyed by the environment's signature key (someone who
/// reads the database cannot test guesses of the key against it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRef {
    index: u16,
    fingerprint: [u8; 8],
}

/// The Authorization value to send for a stored [`KeyRef`].
#[derive(Debug)]
pub enum Resolved<'a> {
    /// The key the event arrived with, still configured.
    Same(&'a Secret),
    /// That key was removed since (a finished rotation): the environment's first key.
    Replaced(&'a Secret),
}

impl KeyRef {
    /// `index:fingerprint-hex`, as stored.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.index, hex::encode(self.fingerprint))
    }

    pub fn parse(raw: &[u8]) -> Option<Self> {
        let raw = std::str::from_utf8(raw).ok()?;
        let (index, fingerprint) = raw.split_once(':')?;
        let mut bytes = [0; 8];
        hex::decode_to_slice(fingerprint, &mut bytes).ok()?;
        Some(Self {
            index: index.parse().ok()?,
            fingerprint: bytes,
        })
    }
}

impl Credentials {
    /// The reference stored for the Authorization key at `index`.
    pub fn key_ref(&self, index: usize) -> KeyRef {
        let key = self
            .authorization
            .get(index)
            .unwrap_or(self.authorization.first());
        KeyRef {
            index: u16::try_from(index).unwrap_or(u16::MAX),
            fingerprint: fingerprint(self.signature.first(), key),
        }
    }

    /// The reference for a raw Authorization value, as rows written before
    /// references were converted; a value no longer configured gets one no
    /// key matches, so its delivery is sent with the first key.
    pub fn key_ref_of(&self, value: &[u8]) -> KeyRef {
        match self.authorization.position(value) {
            Some(index) => self.key_ref(index),
            None => KeyRef {
                index: 0,
                fingerprint: fingerprint(
                    self.signature.first(),
                    &Secret::new(String::from_utf8_lossy(value)),
                ),
            },
        }
    }

    /// The key a stored reference names, found by its fingerprint under any
    /// configured signature key (so a rotation of either list in progress
    /// still finds it), or else the first key.
    pub fn resolve(&self, stored: &KeyRef) -> Resolved<'_> {
        let named = |key: &Secret| {
            self.signature
                .iter()
                .any(|sig| fingerprint(sig, key) == stored.fingerprint)
        };
        let hinted = self
            .authorization
            .get(usize::from(stored.index))
            .filter(|key| named(key));
        match hinted.or_else(|| self.authorization.iter().find(|key| named(key))) {
            Some(key) => Resolved::Same(key),
            None => Resolved::Replaced(self.authorization.first()),
        }
    }
}

fn fingerprint(signature_key: &Secret, authorization: &Secret) -> [u8; 8] {
    let mut mac = hmac_for(signature_key.expose().as_bytes());
    mac.update(b"accelerate-relay authorization key\0");
    mac.update(authorization.expose().as_bytes());
    let full = mac.finalize().into_bytes();
    full[..8].try_into().expect("SHA-256 is 32 bytes")
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("Authorization header missing or not a configured key")]
    Unauthorized,
    #[error("Cko-Signature missing, not hex, or not the HMAC of the body under a configured key")]
    InvalidSignature,
}

/// Checks the Authorization value first, then the signature, as the contract
/// orders them. Every configured key is tried, whichever matches.
pub fn verify(
    credentials: &Credentials,
    authorization: Option<&[u8]>,
    signature: Option<&[u8]>,
    body: Bytes,
) -> Result<VerifiedBody, VerifyError> {
    let authorization = authorization.ok_or(VerifyError::Unauthorized)?;
    let authorization = credentials
        .authorization
        .position(authorization)
        .ok_or(VerifyError::Unauthorized)?;
    let signature = signature
        .and_then(|s| hex::decode(s).ok())
        .ok_or(VerifyError::InvalidSignature)?;
    let valid = credentials.signature.iter().fold(false, |found, key| {
        found | signature_matches(key, &body, &signature)
    });
    if valid {
        Ok(VerifiedBody {
            body,
            authorization,
        })
    } else {
        Err(VerifyError::InvalidSignature)
    }
}

/// `verify_slice` compares in constant time.
fn signature_matches(key: &Secret, body: &[u8], signature: &[u8]) -> bool {
    let mut mac = hmac_for(key.expose().as_bytes());
    mac.update(body);
    mac.verify_slice(signature).is_ok()
}

/// The `Cko-Signature` Checkout.com would send for `body`: lowercase hex HMAC-SHA256.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = hmac_for(key);
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn hmac_for(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            authorization: KeyRing::parse("auth-old,auth-new").expect("keys"),
            signature: KeyRing::parse("sig-old,sig-new").expect("keys"),
        }
    }

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn accepts_any_rotated_key_pair() {
        let body = Bytes::from_static(b"{\"id\":\"evt_1\"}");
        for key in ["sig-old", "sig-new"] {
            let sig = sign(key.as_bytes(), &body);
            let verified = verify(
                &creds(),
                Some(b"auth-new"),
                Some(sig.as_bytes()),
                body.clone(),
            )
            .expect("valid");
            assert_eq!(verified.bytes(), &body);
        }
    }

    #[test]
    fn a_stored_key_ref_finds_its_key_through_rotations() {
        let body = Bytes::from_static(b"{}");
        let sig = sign(b"sig-old", &body);
        let verified =
            verify(&creds(), Some(b"auth-new"), Some(sig.as_bytes()), body).expect("valid");
        assert_eq!(verified.authorization_index(), 1);
        let stored = KeyRef::parse(creds().key_ref(1).encode().as_bytes()).expect("round trip");
        assert_eq!(stored, creds().key_ref_of(b"auth-new"));
        assert!(!stored.encode().contains("auth"));
        let same = |c: &Credentials| match c.resolve(&stored) {
            Resolved::Same(k) => k.expose().to_owned(),
            Resolved::Replaced(k) => format!("replaced by {}", k.expose()),
        };
        assert_eq!(same(&creds()), "auth-new");
        // Reordered, and the signature keys rotated on (the old one still listed).
        let rotated = Credentials {
            authorization: KeyRing::parse("auth-new,auth-newest").expect("keys"),
            signature: KeyRing::parse("sig-newest,sig-old").expect("keys"),
        };
        assert_eq!(same(&rotated), "auth-new");
        // The key is gone: the first key, said so.
        let finished = Credentials {
            authorization: KeyRing::parse("auth-newest").expect("keys"),
            signature: KeyRing::parse("sig-old").expect("keys"),
        };
        assert_eq!(same(&finished), "replaced by auth-newest");
    }

    #[test]
    fn rejects_in_contract_order() {
        let body = Bytes::from_static(b"{}");
        let good = sign(b"sig-new", &body);
        let bad_auth = verify(&creds(), Some(b"nope"), Some(b"zz"), body.clone());
        assert_eq!(bad_auth.unwrap_err(), VerifyError::Unauthorized);
        assert_eq!(
            verify(&creds(), None, Some(good.as_bytes()), body.clone()).unwrap_err(),
            VerifyError::Unauthorized
        );
        for sig in [None, Some(&b"not hex"[..]), Some(&b"abcd"[..])] {
            assert_eq!(
                verify(&creds(), Some(b"auth-old"), sig, body.clone()).unwrap_err(),
                VerifyError::InvalidSignature
            );
        }
        let changed = Bytes::from_static(b"{ }");
        assert_eq!(
            verify(&creds(), Some(b"auth-old"), Some(good.as_bytes()), changed).unwrap_err(),
            VerifyError::InvalidSignature
        );
    }
}
