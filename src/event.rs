//! The minimal parse of a Checkout.com webhook: the few fields the relay needs,
//! read straight from the received bytes. The bytes themselves are never
//! re-serialised; they are stored and forwarded as they came.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Which Accelerate endpoint (and which Checkout.com keys) an event belongs to.
/// Ordered as declared: sandbox first, in maps and listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Environment {
    Sandbox,
    Production,
}

impl Environment {
    /// In declaration order: `index` is a place in this list.
    pub const ALL: [Environment; 2] = [Environment::Sandbox, Environment::Production];

    /// Its place in per-environment arrays (metrics, activity, proxies).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The variable that holds its Checkout.com Authorization key.
    pub fn authorization_key_var(self) -> &'static str {
        match self {
            Environment::Sandbox => "CKO_SANDBOX_AUTHORIZATION_KEY",
            Environment::Production => "CKO_PRODUCTION_AUTHORIZATION_KEY",
        }
    }

    /// The variable that holds its Checkout.com signature key.
    pub fn signature_key_var(self) -> &'static str {
        match self {
            Environment::Sandbox => "CKO_SANDBOX_SIGNATURE_KEY",
            Environment::Production => "CKO_PRODUCTION_SIGNATURE_KEY",
        }
    }

    /// The variable that overrides its Accelerate URL.
    pub fn accelerate_url_var(self) -> &'static str {
        match self {
            Environment::Sandbox => "ACCELERATE_SANDBOX_URL",
            Environment::Production => "ACCELERATE_PRODUCTION_URL",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Sandbox => "sandbox",
            Environment::Production => "production",
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

serialize_as_display!(Environment);

impl FromStr for Environment {
    type Err = EventError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sandbox" => Ok(Environment::Sandbox),
            "production" => Ok(Environment::Production),
            other => Err(EventError::UnknownEnvironment(other.to_owned())),
        }
    }
}

/// Longest event id or type kept; Checkout.com's are ~30 characters, so anything
/// far longer is not a Checkout.com event and must not bloat the dedupe index.
const MAX_FIELD_LEN: usize = 256;

/// Checkout.com's event id (`evt_…`), the key for deduplication.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventId(String);

impl EventId {
    pub fn parse(value: &str) -> Result<Self, EventError> {
        bounded(value, "id").map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The envelope's `type`, e.g. `payment_approved`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventType(String);

impl EventType {
    pub fn parse(value: &str) -> Result<Self, EventError> {
        bounded(value, "type").map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checkout.com's payment id, `data.id` (`pay_…`): what support is asked
/// about. Not secret; only stored to be found by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PaymentId(String);

impl PaymentId {
    /// `None` for anything that is not a short printable string: an event
    /// without a usable payment id is still relayed, only not findable by it.
    pub fn parse(value: &str) -> Option<Self> {
        bounded(value, "data.id").ok().map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The processor token the merchant put in `data.metadata.AccelerateToken`.
///
/// `Display` shows only its ends (`tok_acc…9f3e`), so logging it is safe;
/// `as_str` is for the store's lookup column only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AccelerateToken(String);

impl AccelerateToken {
    /// `None` for an empty value or one with a control character: neither is
    /// a token Accelerate issued, and a NUL cannot even be stored in PostgreSQL.
    pub fn parse(value: &str) -> Option<Self> {
        (!value.is_empty() && !value.chars().any(char::is_control)).then(|| Self(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The redacted form used in logs and in admin listings.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

/// Keeps the first 7 and last 4 characters of a long value, nothing of a short one.
pub fn redact(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 16 {
        return "…".to_owned();
    }
    let head: String = chars[..7].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

impl fmt::Display for AccelerateToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for AccelerateToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccelerateToken({})", self.redacted())
    }
}

/// What the relay knows about an event after the minimal parse.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: EventId,
    pub event_type: EventType,
    /// `None` when the event has no usable token: such events are ignored.
    pub token: Option<AccelerateToken>,
    /// Checkout.com's payment id (`data.id`, `pay_…`), for support's lookups.
    pub payment_id: Option<PaymentId>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the body is not a JSON object with string `id` and `type`: {0}")]
    Malformed(String),
    #[error("`{field}` must be 1 to {MAX_FIELD_LEN} characters, none of them a control character")]
    BadField { field: &'static str },
    #[error("`{0}` appears twice; which one counts would depend on the reader")]
    DuplicateKey(&'static str),
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("a number literal longer than {MAX_NUMBER_LEN} characters")]
    NumberTooLong,
    #[error("unknown environment `{0}`: use `sandbox` or `production`")]
    UnknownEnvironment(String),
}

/// The envelope, borrowed from the body. Unknown fields are skipped without
/// being copied; a duplicated `id`, `type` or `data` is an error (serde
/// refuses it), so two readers of the same bytes can never disagree about the
/// event. Below `data`, [`Member`] holds the same rule.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    event_type: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Reads the members `keys` of a JSON object in one pass, refusing the
/// object when a key appears twice (escaped spellings included): a parser
/// that keeps the last value, as Accelerate's may, must never see another
/// token than ours.
struct Members<const N: usize>([&'static str; N]);

impl<'de, const N: usize> DeserializeSeed<'de> for Members<N> {
    type Value = Result<[Option<&'de RawValue>; N], &'static str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for Members<N> {
    /// `Err(key)`: `key` appears twice.
    type Value = Result<[Option<&'de RawValue>; N], &'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = [None; N];
        let mut twice = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.0.iter().position(|k| *k == key) {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(i) => {
                    let value = map.next_value::<&'de RawValue>()?;
                    if found[i].is_some() {
                        twice = twice.or(Some(self.0[i]));
                    }
                    found[i] = Some(value);
                }
            }
        }
        Ok(match twice {
            Some(key) => Err(key),
            None => Ok(found),
        })
    }
}

/// `raw`'s members `keys` when `raw` is an object (all `None` for anything
/// else); `Err(key)` when `key` appears twice.
fn members<'a, const N: usize>(
    raw: &'a RawValue,
    keys: [&'static str; N],
) -> Result<[Option<&'a RawValue>; N], &'static str> {
    if !is_object(raw) {
        return Ok([None; N]);
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    // Valid JSON (serde checked the whole body), so only a repeat can fail.
    Members(keys).deserialize(&mut de).unwrap_or(Ok([None; N]))
}

/// `raw`'s member `key` when `raw` is an object; `None` for anything else.
fn member<'a>(raw: &'a RawValue, key: &'static str) -> Result<Option<&'a RawValue>, EventError> {
    let [found] = members(raw, [key]).map_err(EventError::DuplicateKey)?;
    Ok(found)
}

/// Reads `id`, `type` and `data.metadata.AccelerateToken` from the raw body.
///
/// The whole body must be valid JSON (so Accelerate gets nothing the relay could
/// not read); anything unexpected below `data` only means "no token".
pub fn parse(body: &[u8]) -> Result<Event, EventError> {
    check_limits(body)?;
    // serde also fills a struct from an array (`["evt_1","payment_approved"]`),
    // so each level is checked to be an object first. Found by fuzzing.
    if first_byte(body) != Some(b'{') {
        return Err(EventError::Malformed("not a JSON object".to_owned()));
    }
    let envelope: Envelope<'_> =
        serde_json::from_slice(body).map_err(|e| EventError::Malformed(e.to_string()))?;
    let (metadata, payment) = match envelope.data {
        // `data.id` read in the same pass; a repeated one is no payment id
        // (it is only for lookups), a repeated `metadata` a refused event.
        Some(data) => match members(data, ["metadata", "id"]) {
            Ok([metadata, payment]) => (metadata, payment),
            Err("id") => (member(data, "metadata")?, None),
            Err(key) => return Err(EventError::DuplicateKey(key)),
        },
        None => (None, None),
    };
    let token = match metadata {
        Some(metadata) => member(metadata, "AccelerateToken")?,
        None => None,
    };
    // Anything but a non-empty string is no token, not a malformed event.
    let token = token
        .and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok())
        .and_then(|token| AccelerateToken::parse(&token));
    let payment_id = payment
        .and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok())
        .and_then(|id| PaymentId::parse(&id));
    Ok(Event {
        id: EventId::parse(&envelope.id)?,
        event_type: EventType::parse(&envelope.event_type)?,
        token,
        payment_id,
    })
}

fn first_byte(json: &[u8]) -> Option<u8> {
    json.iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

fn is_object(raw: &RawValue) -> bool {
    first_byte(raw.get().as_bytes()) == Some(b'{')
}

/// Deepest nesting accepted anywhere in the body; Checkout.com's events are
/// under ten levels deep.
const MAX_DEPTH: usize = 64;
/// Longest number literal; amounts and timestamps are far shorter.
const MAX_NUMBER_LEN: usize = 100;

/// serde_json skips the parts of the body the relay does not read without
/// looking inside them, so a body 10,000 levels deep or with a 10,000-digit
/// number would pass and reach Accelerate. This one pass bounds both; serde
/// still decides whether the JSON is valid. Strings, most of an event's bytes,
/// are jumped over with `memchr` rather than read a byte at a time.
fn check_limits(body: &[u8]) -> Result<(), EventError> {
    let (mut depth, mut number_len) = (0usize, 0usize);
    let mut at = 0;
    while let Some(&byte) = body.get(at) {
        at += 1;
        if byte == b'"' {
            // To the closing quote; the byte after a backslash never closes.
            loop {
                let Some(rest) = body.get(at..) else {
                    return Ok(());
                };
                match memchr::memchr2(b'"', b'\\', rest) {
                    Some(i) if rest[i] == b'\\' => at += i + 2,
                    Some(i) => {
                        at += i + 1;
                        break;
                    }
                    // Unterminated: serde refuses it.
                    None => return Ok(()),
                }
            }
            number_len = 0;
            continue;
        }
        number_len = match byte {
            b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' => number_len + 1,
            _ => 0,
        };
        if number_len > MAX_NUMBER_LEN {
            return Err(EventError::NumberTooLong);
        }
        match byte {
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(EventError::TooDeep);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Ids and types are short printable strings; a control character (a NUL
/// above all, which PostgreSQL cannot store) is no Checkout.com event.
fn bounded(value: &str, field: &'static str) -> Result<String, EventError> {
    if value.is_empty() || value.len() > MAX_FIELD_LEN || value.chars().any(char::is_control) {
        return Err(EventError::BadField { field });
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The byte-at-a-time pass `check_limits` replaced, kept as its reference.
    fn check_limits_bytewise(body: &[u8]) -> Result<(), EventError> {
        let (mut depth, mut number_len) = (0usize, 0usize);
        let (mut in_string, mut escaped) = (false, false);
        for &byte in body {
            if in_string {
                match (escaped, byte) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            number_len = match byte {
                b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' => number_len + 1,
                _ => 0,
            };
            if number_len > MAX_NUMBER_LEN {
                return Err(EventError::NumberTooLong);
            }
            match byte {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(EventError::TooDeep);
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }

    fn verdict(result: Result<(), EventError>) -> Option<&'static str> {
        result.err().map(|e| match e {
            EventError::TooDeep => "deep",
            EventError::NumberTooLong => "number",
            _ => "other",
        })
    }

    proptest! {
        /// Bodies built from the bytes that matter (quotes, escapes, brackets,
        /// digits) at lengths around the limits.
        #[test]
        fn check_limits_agrees_with_the_bytewise_pass(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("\"".to_owned()), Just("\\".to_owned()), Just("[".to_owned()),
                    Just("{".to_owned()), Just("]".to_owned()), Just("}".to_owned()),
                    Just("9".repeat(40)), Just("e-".to_owned()), Just("a".to_owned()),
                    Just("[".repeat(30)),
                ],
                0..200,
            )
        ) {
            let body = parts.concat();
            prop_assert_eq!(
                verdict(check_limits(body.as_bytes())),
                verdict(check_limits_bytewise(body.as_bytes()))
            );
        }
    }

    #[test]
    fn reads_token_through_escapes_and_odd_layout() {
        let body =
            br#" { "data" : {"amount": 10.50, "metadata":{"AccelerateToken":"tok_\u0061cc_123"}},
            "type":"payment_approved", "id":"evt_1" } "#;
        let event = parse(body).expect("valid");
        assert_eq!(event.id.as_str(), "evt_1");
        assert_eq!(event.event_type.as_str(), "payment_approved");
        assert_eq!(event.token.expect("token").as_str(), "tok_acc_123");
    }

    #[test]
    fn anything_odd_below_data_is_no_token() {
        for body in [
            r#"{"id":"e","type":"t"}"#,
            r#"{"id":"e","type":"t","data":null}"#,
            r#"{"id":"e","type":"t","data":[1]}"#,
            r#"{"id":"e","type":"t","data":{"metadata":"x"}}"#,
            r#"{"id":"e","type":"t","data":{"metadata":{"AccelerateToken":5}}}"#,
            r#"{"id":"e","type":"t","data":{"metadata":{"AccelerateToken":""}}}"#,
            r#"{"id":"e","type":"t","data":[{"AccelerateToken":"tok"}]}"#,
            r#"{"id":"e","type":"t","data":{"metadata":["tok"]}}"#,
        ] {
            assert!(
                parse(body.as_bytes()).expect("valid").token.is_none(),
                "{body}"
            );
        }
    }

    #[test]
    fn envelope_must_be_an_object_with_string_id_and_type() {
        for body in [
            "",
            "[]",
            "null",
            r#"{"id":1,"type":"t"}"#,
            r#"{"type":"t"}"#,
            r#"{"id":"e"}"#,
            r#"{"id":"e","id":"f","type":"t"}"#,
            r#"{"id":"e","type":"t"} x"#,
            r#"{"id":"","type":"t"}"#,
            // An array fills a struct in serde: found by the event_parse fuzz target.
            "\n\n[\n \":\"\r\r,\r\")\\\\ \"]\r\n\t",
            r#"["evt_1","payment_approved"]"#,
        ] {
            assert!(parse(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn deep_nesting_and_huge_numbers_are_refused_anywhere() {
        let deep = |n: usize| {
            format!(
                r#"{{"id":"e","type":"t","data":{}{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(parse(deep(60).as_bytes()).is_ok());
        assert!(matches!(
            parse(deep(10_000).as_bytes()),
            Err(EventError::TooDeep)
        ));
        let number = |n: usize| {
            format!(
                r#"{{"id":"e","type":"t","data":{{"a":{}}}}}"#,
                "9".repeat(n)
            )
        };
        assert!(parse(number(30).as_bytes()).is_ok());
        assert!(matches!(
            parse(number(10_000).as_bytes()),
            Err(EventError::NumberTooLong)
        ));
        // Brackets and digits inside strings (escaped quotes too) do not count.
        let in_string = format!(
            r#"{{"id":"e","type":"t","s":"\"{}{}"}}"#,
            "[".repeat(100),
            "9".repeat(200)
        );
        assert!(parse(in_string.as_bytes()).is_ok());
    }

    #[test]
    fn a_duplicated_key_on_the_read_path_is_malformed_at_every_level() {
        for body in [
            r#"{"id":"e","type":"t","data":{},"data":{}}"#,
            r#"{"id":"e","type":"t","data":{"metadata":{},"metadata":{"AccelerateToken":"tok_1234567890"}}}"#,
            r#"{"id":"e","type":"t","data":{"metadata":{"AccelerateToken":"a","AccelerateToken":"b"}}}"#,
            r#"{"id":"e","type":"t","data":{"metadata":{"AccelerateToken":"a","Accelerate\u0054oken":"b"}}}"#,
            r#"{"id":"e","type":"t","data":{"metadata":null,"metadata":{"AccelerateToken":"b"}}}"#,
        ] {
            assert!(parse(body.as_bytes()).is_err(), "{body}");
        }
        // Duplicates off the path the relay reads are the sender's business.
        let elsewhere = r#"{"id":"e","type":"t","data":{"amount":1,"amount":2,"metadata":{"x":1,"x":2,"AccelerateToken":"tok_1234567890"}}}"#;
        assert!(parse(elsewhere.as_bytes()).expect("valid").token.is_some());
    }

    #[test]
    fn the_payment_id_is_data_id_when_it_is_a_short_string() {
        let payment = |body: &str| {
            parse(body.as_bytes())
                .expect("valid")
                .payment_id
                .map(|p| p.as_str().to_owned())
        };
        let at = |data: &str| format!(r#"{{"id":"e","type":"t","data":{data}}}"#);
        assert_eq!(
            payment(&at(
                r#"{"id":"pay_y3oqhf46pyzuxjbcn2giaqnb44","metadata":{}}"#
            ))
            .as_deref(),
            Some("pay_y3oqhf46pyzuxjbcn2giaqnb44")
        );
        assert_eq!(
            payment(&at(r#"{"metadata":{},"id":"pay_\u0061"}"#)).as_deref(),
            Some("pay_a")
        );
        for data in [
            r#"{"id":5}"#,
            r#"{"id":""}"#,
            r#"{"id":"pay_\u0000"}"#,
            r#"{}"#,
            "[]",
        ] {
            assert_eq!(payment(&at(data)), None, "{data}");
        }
        // A repeated data.id is only no payment id: the event is relayed as before.
        let twice =
            at(r#"{"id":"pay_1","id":"pay_2","metadata":{"AccelerateToken":"tok_1234567890"}}"#);
        let event = parse(twice.as_bytes()).expect("still valid");
        assert!(event.payment_id.is_none() && event.token.is_some());
    }

    #[test]
    fn control_characters_make_ids_malformed_and_tokens_unusable() {
        for body in [
            r#"{"id":"evt_\u0000x","type":"t"}"#,
            r#"{"id":"evt_1","type":"payment\u0007approved"}"#,
            "{\"id\":\"evt_\u{7f}\",\"type\":\"t\"}",
        ] {
            assert!(
                matches!(parse(body.as_bytes()), Err(EventError::BadField { .. })),
                "{body}"
            );
        }
        let nul_token = r#"{"id":"e","type":"t","data":{"metadata":{"AccelerateToken":"tok_\u0000_1234567890"}}}"#;
        assert!(parse(nul_token.as_bytes()).expect("valid").token.is_none());
    }

    #[test]
    fn token_display_is_redacted() {
        let token = AccelerateToken::parse("tok_acc_0123456789abcdef9f3e").expect("token");
        assert_eq!(token.to_string(), "tok_acc…9f3e");
        assert_eq!(AccelerateToken::parse("short").expect("t").to_string(), "…");
    }
}
