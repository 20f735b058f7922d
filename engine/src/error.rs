//! The engine's error type: one variant per reason a caller must handle.

use std::path::PathBuf;

pub use work_host_api::Violation;

/// A `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an engine operation could not be carried out.
///
/// A call that *ran* never fails with this type: however the guest ended is
/// reported as a [`CallReport`](crate::runtime::CallReport) with an outcome
/// class. These errors are for work that could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No tool of that name (or that version) is registered.
    #[error("unknown tool `{name}`")]
    ToolNotFound {
        /// The name as asked for, with `@version` when given.
        name: String,
    },
    /// The arguments are not valid JSON, or do not match the tool's schema.
    #[error("invalid arguments for `{tool}`: {}", Violation::join(.violations))]
    InvalidArgs {
        /// The tool called.
        tool: String,
        /// Each problem, with the JSON path it is at.
        violations: Vec<Violation>,
    },
    /// The argument text is over the runtime's limit.
    #[error("arguments of {size} bytes are over the {max}-byte limit")]
    ArgsTooLarge {
        /// Size given.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A per-call or configured limit is outside what the runtime allows.
    #[error("{limit} = {value} is out of range (1 to {max})")]
    LimitOutOfRange {
        /// Which limit.
        limit: &'static str,
        /// The value asked for.
        value: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly file (no `\\0asm` header)")]
    NotWasm,
    /// The bytes are a core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component: build the tool for wasm32-wasip2 (see the README)"
    )]
    CoreModule,
    /// The component does not parse or validate (truncated, corrupt).
    #[error("invalid component: {reason}")]
    InvalidComponent {
        /// wasmtime's explanation.
        reason: String,
    },
    /// The component does not implement the `work:tool` world.
    #[error("the component does not implement the work:tool/tool world: {reason}")]
    WrongWorld {
        /// What is missing or mistyped.
        reason: String,
    },
    /// The tool's `describe` failed or returned an unusable spec.
    #[error("invalid tool spec: {reason}")]
    InvalidSpec {
        /// What is wrong.
        reason: String,
    },
    /// A grant given at registration is unusable.
    #[error(transparent)]
    Grant(#[from] crate::runtime::GrantError),
    /// The data directory holds something this engine cannot read.
    #[error("corrupt registry entry {path}: {reason}")]
    CorruptRegistry {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The host's file system failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// wasmtime failed for a reason that is not the guest's.
    #[error("{context}: {reason}")]
    Runtime {
        /// What the engine was doing.
        context: &'static str,
        /// wasmtime's explanation.
        reason: String,
    },
}

impl Error {
    /// A stable snake_case code for the variant, for JSON output and APIs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ToolNotFound { .. } => "tool_not_found",
            Self::InvalidArgs { .. } => "invalid_args",
            Self::ArgsTooLarge { .. } => "args_too_large",
            Self::LimitOutOfRange { .. } => "limit_out_of_range",
            Self::NotWasm => "not_wasm",
            Self::CoreModule => "core_module",
            Self::InvalidComponent { .. } => "invalid_component",
            Self::WrongWorld { .. } => "wrong_world",
            Self::InvalidSpec { .. } => "invalid_spec",
            Self::Grant(_) => "invalid_grant",
            Self::CorruptRegistry { .. } => "corrupt_registry",
            Self::Io(_) => "io_error",
            Self::Runtime { .. } => "runtime_error",
        }
    }

    pub(crate) fn runtime(context: &'static str, err: &wasmtime::Error) -> Self {
        Self::Runtime {
            context,
            reason: crate::runtime::error_chain(err),
        }
    }
}
