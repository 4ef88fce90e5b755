//! When to try a failed delivery again: the configured schedule, Accelerate's
//! `Retry-After`, and a little jitter so retries after an outage spread out.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rand::Rng;

/// Longest wait a `Retry-After` can impose; a broken or hostile header must not
/// park a payment event for days.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// Waits before each retry. A delivery gets `len() + 1` attempts and is dead after that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("`{item}` is not a duration; write waits like `5s,30s,2m,1h`")]
    NotADuration { item: String },
    #[error(
        "has an empty entry; write waits like `5s,30s,2m,1h`, with no empty place between commas"
    )]
    EmptyEntry,
    #[error(
        "`{item}` is longer than {MAX_WAIT_DAYS} days; a payment event must not wait that long"
    )]
    TooLong { item: String },
    #[error("has more than {MAX_RETRIES} waits")]
    TooMany,
}

/// Longest single wait accepted: anything longer is a typo, not a schedule.
const MAX_WAIT_DAYS: u64 = 7;
/// Most retries accepted (each is a row update and an HTTP request).
const MAX_RETRIES: usize = 1_000;

impl RetrySchedule {
    /// The wait after attempt `attempt` (1-based) failed; `None` when the
    /// schedule is used up and the delivery is dead.
    pub fn wait_after(&self, attempt: u32) -> Option<Duration> {
        let index = usize::try_from(attempt).ok()?.checked_sub(1)?;
        self.0.get(index).copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        "5s,30s,2m,10m,30m,1h,2h,4h,8h,12h,24h"
            .parse()
            .expect("the default schedule parses")
    }
}

impl FromStr for RetrySchedule {
    type Err = ScheduleError;

    /// Every entry must be a duration: `","` or `5s,,30s` is refused, as an
    /// empty `RELAY_EVENT_TYPES` is, rather than read as fewer retries.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let waits = s
            .split(',')
            .map(str::trim)
            .map(|item| {
                if item.is_empty() {
                    return Err(ScheduleError::EmptyEntry);
                }
                let wait =
                    humantime::parse_duration(item).map_err(|_| ScheduleError::NotADuration {
                        item: item.to_owned(),
                    })?;
                if wait > Duration::from_secs(MAX_WAIT_DAYS * 86_400) {
                    return Err(ScheduleError::TooLong {
                        item: item.to_owned(),
                    });
                }
                Ok(wait)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if waits.len() > MAX_RETRIES {
            return Err(ScheduleError::TooMany);
        }
        Ok(RetrySchedule(waits))
    }
}

impl fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        f.write_str(&items.join(","))
    }
}

/// Reads `Retry-After` as delta-seconds or an HTTP date, capped at an hour.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Seconds too many for a u64 are still "longer than the cap".
        value
            .parse::<u64>()
            .map_or(RETRY_AFTER_CAP, Duration::from_secs)
    } else {
        httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    };
    Some(wait.min(RETRY_AFTER_CAP))
}

/// The wait before the next attempt: the schedule's, or Accelerate's if longer,
/// then lengthened by up to 10% at random (never shortened).
pub fn next_wait(scheduled: Duration, retry_after: Option<Duration>) -> Duration {
    let base = retry_after.map_or(scheduled, |ra| ra.max(scheduled));
    let extra = rand::thread_rng().gen_range(0.0..=0.1);
    base + base.mul_f64(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example_and_ends_with_dead() {
        let s: RetrySchedule = "5s, 30s,2m,1h".parse().expect("valid");
        assert_eq!(s.wait_after(1), Some(Duration::from_secs(5)));
        assert_eq!(s.wait_after(4), Some(Duration::from_secs(3600)));
        assert_eq!(s.wait_after(5), None);
        assert_eq!(s.wait_after(0), None);
        assert_eq!(RetrySchedule::default().len(), 11);
        assert!("5s,soon".parse::<RetrySchedule>().is_err());
        for empty in ["", ",", "5s,,30s", "5s,", " , "] {
            assert_eq!(
                empty.parse::<RetrySchedule>(),
                Err(ScheduleError::EmptyEntry),
                "{empty:?}"
            );
        }
        assert!("5s,8d".parse::<RetrySchedule>().is_err());
    }

    /// check-config prints the schedule in humantime's form (`24h` is
    /// `1day`); an operator can set what it printed and get the same waits.
    #[test]
    fn the_printed_schedule_parses_back_to_itself() {
        let custom: RetrySchedule = "250ms,1500ms,90s,25h,7d".parse().expect("valid");
        for schedule in [RetrySchedule::default(), custom] {
            let printed = schedule.to_string();
            assert_eq!(printed.parse::<RetrySchedule>(), Ok(schedule), "{printed}");
        }
        assert!(RetrySchedule::default().to_string().ends_with(",12h,1day"));
    }

    #[test]
    fn retry_after_seconds_or_date_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("999999", now), Some(RETRY_AFTER_CAP));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(
            parse_retry_after(&date, now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        // Beyond what a u64 holds is beyond the cap, not unreadable.
        assert_eq!(
            parse_retry_after("99999999999999999999", now),
            Some(RETRY_AFTER_CAP)
        );
    }

    #[test]
    fn jitter_only_lengthens_and_by_at_most_ten_percent() {
        let base = Duration::from_secs(100);
        for _ in 0..1000 {
            let w = next_wait(base, None);
            assert!(w >= base && w <= Duration::from_secs(110), "{w:?}");
        }
        let w = next_wait(Duration::from_secs(5), Some(Duration::from_secs(60)));
        assert!(w >= Duration::from_secs(60));
        let w = next_wait(Duration::from_secs(60), Some(Duration::from_secs(5)));
        assert!(w >= Duration::from_secs(60));
    }
}
