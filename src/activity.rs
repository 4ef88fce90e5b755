//! This process's accepted events and delivery attempts per minute over the
//! last day, for the console's chart.
//!
//! Kept in memory rather than read from the store: counting a day of rows per
//! minute would cost an index on every write, or a scan of millions of rows
//! per page view. The price is that the chart starts empty after a restart
//! and each replica counts its own (the Prometheus counters and the Grafana
//! dashboard in `deploy/monitoring` have the whole fleet's history).

use std::sync::Mutex;

use crate::event::Environment;
use crate::store::Timestamp;

/// A day of minutes.
pub const MINUTES: usize = 24 * 60;

/// What happened in one minute, in one environment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Minute {
    pub accepted: u64,
    /// Attempts Accelerate answered 2xx.
    pub delivered: u64,
    /// Attempts that did not end in a 2xx (retried or dead).
    pub failed: u64,
}

pub struct Activity {
    ring: Mutex<Ring>,
    started: Timestamp,
}

struct Ring {
    /// The minute (since the Unix epoch) each slot holds, per slot.
    stamps: Vec<i64>,
    counts: Vec<[Minute; 2]>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            ring: Mutex::new(Ring {
                stamps: vec![i64::MIN; MINUTES],
                counts: vec![[Minute::default(); 2]; MINUTES],
            }),
            started: Timestamp::now(),
        }
    }
}

impl Activity {
    pub fn accepted(&self, env: Environment, at: Timestamp) {
        self.add(env, at, |m| m.accepted += 1);
    }

    pub fn attempt(&self, env: Environment, at: Timestamp, delivered: bool) {
        self.add(env, at, |m| match delivered {
            true => m.delivered += 1,
            false => m.failed += 1,
        });
    }

    /// When counting began: the chart knows nothing from before.
    pub fn since(&self) -> Timestamp {
        self.started
    }

    /// The last `minutes` minutes up to and including the one of `now`, oldest first.
    pub fn last(&self, env: Environment, minutes: usize, now: Timestamp) -> Vec<Minute> {
        let now = minute_of(now);
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        (0..minutes.min(MINUTES) as i64)
            .rev()
            .map(|ago| {
                let minute = now - ago;
                let slot = slot_of(minute);
                match ring.stamps[slot] == minute {
                    true => ring.counts[slot][env.index()],
                    false => Minute::default(),
                }
            })
            .collect()
    }

    fn add(&self, env: Environment, at: Timestamp, count: impl FnOnce(&mut Minute)) {
        let minute = minute_of(at);
        let slot = slot_of(minute);
        // A poisoned lock only means a panic elsewhere mid-increment: the counts stand.
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.stamps[slot] != minute {
            ring.stamps[slot] = minute;
            ring.counts[slot] = [Minute::default(); 2];
        }
        count(&mut ring.counts[slot][env.index()]);
    }
}

fn minute_of(at: Timestamp) -> i64 {
    at.0.div_euclid(60_000)
}

fn slot_of(minute: i64) -> usize {
    minute.rem_euclid(MINUTES as i64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn counts_land_in_their_minute_and_environment() {
        let activity = Activity::default();
        let now = Timestamp(1_000 * MIN + 5);
        activity.accepted(Environment::Sandbox, Timestamp(998 * MIN + 1));
        activity.accepted(Environment::Sandbox, now);
        activity.attempt(Environment::Sandbox, now, true);
        activity.attempt(Environment::Sandbox, now, false);
        activity.attempt(Environment::Production, now, false);
        let sandbox = activity.last(Environment::Sandbox, 3, now);
        assert_eq!(
            sandbox,
            vec![
                Minute {
                    accepted: 1,
                    delivered: 0,
                    failed: 0
                },
                Minute::default(),
                Minute {
                    accepted: 1,
                    delivered: 1,
                    failed: 1
                },
            ]
        );
        let production = activity.last(Environment::Production, 1, now);
        assert_eq!(
            production,
            vec![Minute {
                accepted: 0,
                delivered: 0,
                failed: 1
            }]
        );
    }

    #[test]
    fn a_minute_a_day_old_is_forgotten_not_added_to() {
        let activity = Activity::default();
        let then = Timestamp(5 * MIN);
        let a_day_later = Timestamp(then.0 + MINUTES as i64 * MIN);
        activity.accepted(Environment::Sandbox, then);
        activity.accepted(Environment::Sandbox, a_day_later);
        assert_eq!(
            activity.last(Environment::Sandbox, 1, a_day_later)[0].accepted,
            1
        );
        let all: u64 = activity
            .last(Environment::Sandbox, MINUTES, a_day_later)
            .iter()
            .map(|m| m.accepted)
            .sum();
        assert_eq!(all, 1);
    }
}
