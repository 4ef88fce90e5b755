//! Every delivery rule of the contract, observed at a mock Accelerate; a
//! module per topic.

use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

mod forwarding;
mod history;
mod keys;
mod retries;
mod workers;
