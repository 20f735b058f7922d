//! End-to-end tests of the engine: through the public API (`ToolHost`) and
//! through the `work-engine` binary. Guests are built by
//! `work-test-artifacts`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod auth;
mod calls;
mod cli;
mod cost;
mod examples;
mod guests;
mod http;
mod jobs;
mod random_workloads;
mod registry;
mod scheduler;
mod store;
mod support;
