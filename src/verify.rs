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
pub struct VerifiedBody(Bytes);

impl VerifiedBody {
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
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
    if !credentials.authorization.matches_any(authorization) {
        return Err(VerifyError::Unauthorized);
    }
    let signature = signature
        .and_then(|s| hex::decode(s).ok())
        .ok_or(VerifyError::InvalidSignature)?;
    let valid = credentials.signature.iter().fold(false, |found, key| {
        found | signature_matches(key, &body, &signature)
    });
    if valid {
        Ok(VerifiedBody(body))
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
