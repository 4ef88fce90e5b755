//! The integration tests, one binary with a module per topic: the real
//! server (in this process or as the built binary) on random ports, real HTTP
//! clients, real SQLite files and PostgreSQL databases, mock Accelerates that
//! are real HTTP servers. `cargo test --test it <topic>::` runs one topic.

#[macro_use]
mod common;

mod admin;
mod cli;
mod console;
mod control;
mod crash;
mod credentials;
mod deliver;
mod edges;
mod egress;
mod faults;
mod hostile;
mod lookups;
mod postgres;
mod properties;
mod receive;
mod replays;
mod secrets;
mod serve_tls;
mod store_key;
mod upgrade;
