//! The built-in backends: [`WasmBackend`] runs tool calls in the sandbox,
//! [`LocalBackend`] runs async Rust closures in-process, [`MockBackend`]
//! plays any outcome for tests and demos. Any other backend implements
//! [`Backend`](work_host_api::Backend) from `work-host-api`.

mod local;
mod mock;
mod wasm;

pub use local::LocalBackend;
pub use mock::{MockBackend, MockBehavior, MockRun};
pub use wasm::WasmBackend;
