//! Paths of the guest components, built for `wasm32-wasip2` by this crate's
//! build script, for the tests and benches of the other crates.
//!
//! `foreach_tool!` and `foreach_fixture!` call a macro once per guest: a test
//! module passes one that names a test per guest, so adding a guest without
//! a test fails to compile.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
