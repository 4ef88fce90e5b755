//! The signature check on arbitrary keys, signatures and bodies: never panics,
//! accepts exactly the body Checkout.com's HMAC was computed over.
#![no_main]

use accelerate_relay::secret::KeyRing;
use accelerate_relay::verify::{sign, verify, Credentials};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&key_len, rest)) = data.split_first() else {
        return;
    };
    let key_len = usize::from(key_len % 48) + 1;
    if rest.len() < key_len + 64 {
        return;
    }
    let (key, rest) = rest.split_at(key_len);
    let (signature, body) = rest.split_at(64);
    let Ok(key) = std::str::from_utf8(key) else {
        return;
    };
    let Some(ring) = KeyRing::parse(key) else {
        return;
    };
    let credentials = Credentials {
        authorization: KeyRing::parse("a").expect("key"),
        signature: ring.clone(),
    };
    let body = Bytes::copy_from_slice(body);
    // Arbitrary signature bytes: only a real HMAC under one of the keys passes.
    if let Ok(verified) = verify(&credentials, Some(b"a"), Some(signature), body.clone()) {
        assert_eq!(verified.bytes(), &body);
        let expected: Vec<String> = ring
            .iter()
            .map(|k| sign(k.expose().as_bytes(), &body))
            .collect();
        let hex = std::str::from_utf8(signature)
            .expect("a valid signature is hex")
            .to_ascii_lowercase();
        assert!(expected.contains(&hex));
    }
    // The real signature under each key always passes, byte for byte.
    for k in ring.iter() {
        let good = sign(k.expose().as_bytes(), &body);
        let verified = verify(
            &credentials,
            Some(b"a"),
            Some(good.as_bytes()),
            body.clone(),
        )
        .expect("a correctly signed body is accepted");
        assert_eq!(verified.bytes(), &body);
    }
});
