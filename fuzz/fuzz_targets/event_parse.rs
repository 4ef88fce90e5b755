//! The minimal parse on arbitrary bytes: never panics, and whatever it reads
//! is what the bytes say.
#![no_main]

use accelerate_relay::event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = event::parse(data) {
        // Accepted bodies are valid JSON objects whose id/type are those read.
        let value: serde_json::Value =
            serde_json::from_slice(data).expect("accepted bodies are JSON");
        assert_eq!(value["id"].as_str(), Some(parsed.id.as_str()));
        assert_eq!(value["type"].as_str(), Some(parsed.event_type.as_str()));
        if let Some(token) = parsed.token {
            assert_eq!(
                value["data"]["metadata"]["AccelerateToken"].as_str(),
                Some(token.as_str())
            );
        }
    }
});
