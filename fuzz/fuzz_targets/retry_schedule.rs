//! `RELAY_RETRY_SCHEDULE` and `Retry-After` parsing on arbitrary text: never
//! panics; a parsed schedule prints back to one that parses the same.
#![no_main]

use std::time::{Duration, SystemTime};

use accelerate_relay::retry::{parse_retry_after, RetrySchedule, RETRY_AFTER_CAP};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(schedule) = text.parse::<RetrySchedule>() {
        let again: RetrySchedule = schedule
            .to_string()
            .parse()
            .expect("printed schedules parse");
        assert_eq!(again, schedule);
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Some(wait) = parse_retry_after(text, now) {
        assert!(wait <= RETRY_AFTER_CAP);
    }
});
