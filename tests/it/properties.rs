//! Properties over arbitrary input: what is signed with a configured key is
//! accepted byte for byte; any change to a byte is rejected; no parser panics.

use accelerate_relay::event;
use accelerate_relay::retry::RetrySchedule;
use accelerate_relay::secret::KeyRing;
use accelerate_relay::verify::{sign, verify, Credentials, VerifyError};
use bytes::Bytes;
use proptest::prelude::*;

fn credentials(keys: &[String]) -> Credentials {
    Credentials {
        authorization: KeyRing::parse("auth-a,auth-b").expect("keys"),
        signature: KeyRing::parse(&keys.join(",")).expect("keys"),
    }
}

fn key() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_+/=-]{1,64}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_body_signed_with_a_configured_key_is_accepted_byte_for_byte(
        body in proptest::collection::vec(any::<u8>(), 0..4096),
        keys in proptest::collection::vec(key(), 1..4),
        which in any::<prop::sample::Index>(),
    ) {
        let key = which.get(&keys);
        let signature = sign(key.as_bytes(), &body);
        let verified = verify(&credentials(&keys), Some(b"auth-b"), Some(signature.as_bytes()), Bytes::from(body.clone()))
            .expect("a body signed with a configured key is accepted");
        prop_assert_eq!(verified.bytes().as_ref(), body.as_slice());
    }

    #[test]
    fn any_changed_byte_is_rejected(
        body in proptest::collection::vec(any::<u8>(), 1..4096),
        keys in proptest::collection::vec(key(), 1..4),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let signature = sign(keys[0].as_bytes(), &body);
        let mut changed = body.clone();
        changed[position.index(body.len())] ^= flip;
        let result = verify(&credentials(&keys), Some(b"auth-a"), Some(signature.as_bytes()), Bytes::from(changed));
        prop_assert_eq!(result.unwrap_err(), VerifyError::InvalidSignature);
    }

    #[test]
    fn a_changed_signature_is_rejected(
        body in proptest::collection::vec(any::<u8>(), 0..1024),
        position in 0usize..64,
    ) {
        let keys = vec!["k".to_owned()];
        let mut signature = sign(b"k", &body).into_bytes();
        signature[position] = if signature[position] == b'0' { b'1' } else { b'0' };
        let result = verify(&credentials(&keys), Some(b"auth-a"), Some(&signature), Bytes::from(body));
        prop_assert_eq!(result.unwrap_err(), VerifyError::InvalidSignature);
    }

    #[test]
    fn a_key_that_is_not_configured_is_rejected(
        body in proptest::collection::vec(any::<u8>(), 0..1024),
        keys in proptest::collection::vec(key(), 1..4),
        other in key(),
    ) {
        prop_assume!(!keys.contains(&other));
        let signature = sign(other.as_bytes(), &body);
        let result = verify(&credentials(&keys), Some(b"auth-a"), Some(signature.as_bytes()), Bytes::from(body));
        prop_assert_eq!(result.unwrap_err(), VerifyError::InvalidSignature);
    }

    #[test]
    fn the_event_parse_never_panics(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = event::parse(&body);
    }

    #[test]
    fn the_event_parse_reads_any_id_type_and_token(
        id in "[ -~]{1,100}",
        kind in "[a-z_]{1,40}",
        token in "[ -~]{1,100}",
    ) {
        let body = serde_json::json!({"id": id, "type": kind, "data": {"metadata": {"AccelerateToken": token}}});
        let body = serde_json::to_vec(&body).expect("json");
        let parsed = event::parse(&body).expect("valid");
        prop_assert_eq!(parsed.id.as_str(), id.as_str());
        prop_assert_eq!(parsed.event_type.as_str(), kind.as_str());
        let parsed_token = parsed.token.expect("token");
        prop_assert_eq!(parsed_token.as_str(), token.as_str());
    }

    #[test]
    fn the_retry_schedule_parse_never_panics(text in "\\PC{0,64}") {
        let _ = text.parse::<RetrySchedule>();
    }
}
