//! Card holder data sealed at rest with keys the merchant holds
//! (`RELAY_STORE_KEY`).
//!
//! A stored body carries the card holder's name, address, email and card
//! digits; the forwarded headers carry the signature that would confirm a
//! guess at them. With a key configured both are sealed with AES-256-GCM
//! (ring's, AES-NI and carry-less multiply where the CPU has them: about
//! 1 µs for an event's pair, against 6.8 µs for RustCrypto's
//! XChaCha20-Poly1305 on the same machine) before they reach the store: a
//! fresh random 96-bit nonce per value, and the delivery's identity (column,
//! environment, event id) bound as associated data, so a value moved to
//! another row or column is refused rather than forwarded. Random 96-bit
//! nonces keep within the 2^32 values per key that NIST allows for them up
//! to about two billion events per key; a rotation starts a new count. What
//! a lookup needs (event id, token, payment id, times) stays in its own
//! clear columns.
//!
//! Sealed value: `SEALED_MAGIC` (2 bytes), the key id (8), the nonce (12),
//! then ciphertext and tag (16).

use std::fmt;

use base64::Engine as _;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::{Digest, Sha256};

use crate::event::Environment;

const SEALED_MAGIC: [u8; 2] = *b"S1";
const KEY_ID_LEN: usize = 8;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = SEALED_MAGIC.len() + KEY_ID_LEN + NONCE_LEN;

/// Which stored value: bound into the seal, so body and headers cannot be swapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Body,
    Headers,
}

impl Column {
    fn as_str(self) -> &'static str {
        match self {
            Column::Body => "body",
            Column::Headers => "headers",
        }
    }
}

/// Names a store key without revealing it: the first 8 bytes of a SHA-256
/// of the key (a 256-bit random key cannot be found from them). Stored
/// beside each sealed row, so a rotation finds the rows of an older key
/// through an index and an operator can tell which key a row needs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    fn of(key: &[u8; 32]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"accelerate-relay store key id\0")
            .chain_update(key)
            .finalize();
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self(id)
    }

    /// As stored in `sealed_by` (16 hex digits).
    pub fn parse(text: &str) -> Option<Self> {
        let mut id = [0; KEY_ID_LEN];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(Self(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a stored value could not be opened. Never guessed around: the
/// delivery is not sent and stays stored as it is.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error(
        "it is sealed with store key {0}, which RELAY_STORE_KEY does not hold: add that key \
         back to RELAY_STORE_KEY (after the first) and retry the delivery"
    )]
    UnknownKey(KeyId),
    #[error(
        "it is sealed but RELAY_STORE_KEY is not set: set RELAY_STORE_KEY to the key(s) it was \
         sealed with and retry the delivery"
    )]
    NoKeys,
    #[error(
        "its sealed value does not open with store key {0}: it was altered or moved from \
         another delivery in the database; it is kept as stored and not sent"
    )]
    Refused(KeyId),
    #[error("its stored value is not a sealed value this release reads; it is kept as stored and not sent")]
    Malformed,
}

struct StoreKey {
    id: KeyId,
    cipher: LessSafeKey,
}

/// `RELAY_STORE_KEY`: the first key seals, any opens. Prints as key ids only.
pub struct StoreKeys(Vec<StoreKey>);

impl StoreKeys {
    /// One or more 256-bit keys, hex (64 digits) or base64, comma-separated.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut keys: Vec<StoreKey> = Vec::new();
        for (n, text) in value
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .enumerate()
        {
            let key = decode_key(text).ok_or_else(|| {
                format!(
                    "key {} is not 256 bits in hex (64 digits) or base64 (44 characters); \
                     make one with `openssl rand -hex 32`",
                    n + 1
                )
            })?;
            let id = KeyId::of(&key);
            if keys.iter().any(|k| k.id == id) {
                return Err(format!("key {} is given twice; give each key once", n + 1));
            }
            let cipher = UnboundKey::new(&AES_256_GCM, &key).expect("a 256-bit key");
            keys.push(StoreKey {
                id,
                cipher: LessSafeKey::new(cipher),
            });
        }
        if keys.is_empty() {
            return Err("holds no key; unset it to store in clear, or give a key".to_owned());
        }
        Ok(Self(keys))
    }

    /// The key new values are sealed with.
    pub fn current(&self) -> KeyId {
        self.0[0].id
    }

    /// Every configured key id, the sealing one first.
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.0.iter().map(|k| k.id)
    }

    /// What `check-config` and the start-up line show.
    pub fn masked(&self) -> String {
        let ids: Vec<String> = self.ids().map(|id| id.to_string()).collect();
        format!("<set: seals with {}; opens {}>", ids[0], ids.join(", "))
    }

    /// Seals `clear` as `column` of the delivery (`environment`, `event_id`).
    pub fn seal(
        &self,
        column: Column,
        environment: Environment,
        event_id: &str,
        clear: &[u8],
    ) -> Vec<u8> {
        let key = &self.0[0];
        let mut nonce = [0; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(HEADER_LEN + clear.len() + TAG_LEN);
        out.extend_from_slice(&SEALED_MAGIC);
        out.extend_from_slice(&key.id.0);
        out.extend_from_slice(&nonce);
        let aad = associated(&out[..HEADER_LEN], column, environment, event_id);
        out.extend_from_slice(clear);
        let tag = key
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut out[HEADER_LEN..],
            )
            .expect("AES-256-GCM seals any length a webhook can have");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// A delivery's body and headers, each sealed as its own column.
    pub fn seal_row(
        &self,
        environment: Environment,
        event_id: &str,
        body: &[u8],
        headers: &[u8],
    ) -> (Vec<u8>, Vec<u8>) {
        let seal = |column, value| self.seal(column, environment, event_id, value);
        (seal(Column::Body, body), seal(Column::Headers, headers))
    }

    /// Opens what `seal` made for the same column and delivery.
    pub fn open(
        &self,
        column: Column,
        environment: Environment,
        event_id: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let id = sealed_key(sealed).ok_or(SealError::Malformed)?;
        let key = self
            .0
            .iter()
            .find(|k| k.id == id)
            .ok_or(SealError::UnknownKey(id))?;
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed[SEALED_MAGIC.len() + KEY_ID_LEN..HEADER_LEN])
                .map_err(|_| SealError::Malformed)?;
        let aad = associated(&sealed[..HEADER_LEN], column, environment, event_id);
        let mut value = sealed[HEADER_LEN..].to_vec();
        let opened = key
            .cipher
            .open_in_place(nonce, Aad::from(&aad), &mut value)
            .map_err(|_| SealError::Refused(id))?
            .len();
        value.truncate(opened);
        Ok(value)
    }
}

impl fmt::Debug for StoreKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// The key id a sealed value names, if it is one.
pub fn sealed_key(sealed: &[u8]) -> Option<KeyId> {
    if sealed.len() < HEADER_LEN + TAG_LEN || sealed[..SEALED_MAGIC.len()] != SEALED_MAGIC {
        return None;
    }
    let mut id = [0; KEY_ID_LEN];
    id.copy_from_slice(&sealed[SEALED_MAGIC.len()..SEALED_MAGIC.len() + KEY_ID_LEN]);
    Some(KeyId(id))
}

/// Opens what `seal_row` made, with `keys` (none configured: refused).
pub fn open_row(
    keys: Option<&StoreKeys>,
    environment: Environment,
    event_id: &str,
    body: &[u8],
    headers: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), SealError> {
    let keys = keys.ok_or(SealError::NoKeys)?;
    let open = |column, value| keys.open(column, environment, event_id, value);
    Ok((open(Column::Body, body)?, open(Column::Headers, headers)?))
}

fn associated(header: &[u8], column: Column, environment: Environment, event_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 64 + event_id.len());
    aad.extend_from_slice(b"accelerate-relay\0");
    aad.extend_from_slice(header);
    aad.push(0);
    aad.extend_from_slice(column.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(environment.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(event_id.as_bytes());
    aad
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    let mut key = [0; 32];
    if text.len() == 64 && hex::decode_to_slice(text, &mut key).is_ok() {
        return Some(key);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .ok()?;
    (bytes.len() == 32).then(|| {
        key.copy_from_slice(&bytes);
        key
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    #[test]
    fn sealed_values_open_only_for_their_own_row_and_column() {
        let keys = StoreKeys::parse(A).unwrap();
        let sealed = keys.seal(Column::Body, Environment::Sandbox, "evt_1", b"card holder");
        assert!(!sealed.windows(11).any(|w| w == b"card holder"));
        let open = |c, e, id: &str| keys.open(c, e, id, &sealed);
        assert_eq!(
            open(Column::Body, Environment::Sandbox, "evt_1").unwrap(),
            b"card holder"
        );
        let refused = Err(SealError::Refused(keys.current()));
        assert_eq!(open(Column::Body, Environment::Sandbox, "evt_2"), refused);
        assert_eq!(
            open(Column::Body, Environment::Production, "evt_1"),
            refused
        );
        assert_eq!(
            open(Column::Headers, Environment::Sandbox, "evt_1"),
            refused
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            keys.open(Column::Body, Environment::Sandbox, "evt_1", &tampered),
            refused
        );
        // A fresh nonce each time: the same value never seals the same way twice.
        assert_ne!(
            sealed,
            keys.seal(Column::Body, Environment::Sandbox, "evt_1", b"card holder")
        );
    }

    #[test]
    fn the_first_key_seals_and_any_opens() {
        let old = StoreKeys::parse(A).unwrap();
        let rotated = StoreKeys::parse(&format!("{B}, {A}")).unwrap();
        let new_only = StoreKeys::parse(B).unwrap();
        let by_old = old.seal(Column::Headers, Environment::Production, "evt", b"h");
        assert_eq!(
            rotated
                .open(Column::Headers, Environment::Production, "evt", &by_old)
                .unwrap(),
            b"h"
        );
        assert_eq!(sealed_key(&by_old), Some(old.current()));
        let by_rotated = rotated.seal(Column::Headers, Environment::Production, "evt", b"h");
        assert_eq!(sealed_key(&by_rotated), Some(new_only.current()));
        assert_eq!(
            new_only.open(Column::Headers, Environment::Production, "evt", &by_old),
            Err(SealError::UnknownKey(old.current()))
        );
        assert_eq!(
            open_row(None, Environment::Production, "evt", &by_old, &by_old),
            Err(SealError::NoKeys)
        );
        assert_eq!(
            new_only.open(Column::Headers, Environment::Production, "evt", b"clear"),
            Err(SealError::Malformed)
        );
    }

    #[test]
    fn keys_are_read_strictly_and_never_printed() {
        assert!(StoreKeys::parse("abc").unwrap_err().contains("key 1"));
        assert!(StoreKeys::parse(&format!("{A},{A}"))
            .unwrap_err()
            .contains("twice"));
        assert!(StoreKeys::parse(" , ").is_err());
        let keys = StoreKeys::parse(&format!("{A},{B}")).unwrap();
        let shown = format!("{keys:?} {}", keys.masked());
        assert!(!shown.contains(A) && !shown.contains(B) && !shown.contains("0001020304"));
        assert_eq!(
            KeyId::parse(&keys.current().to_string()),
            Some(keys.current())
        );
    }
}
