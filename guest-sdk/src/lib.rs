//! Write [work-engine] tools as ordinary Rust functions.
//!
//! A tool is an argument type that derives [`serde::Deserialize`] and
//! [`schemars::JsonSchema`], and a function from it to
//! `Result<T, ToolError>` where `T` serialises to JSON. The [`tool!`] macro
//! turns the function into a WebAssembly component of the `work:tool` world:
//! it derives the parameter schema from the argument type (doc comments on
//! fields become parameter descriptions, the function's doc comment becomes
//! the tool's description), parses the arguments, serialises the result and
//! maps errors onto the WIT `tool-error` variants.
//!
//! ```ignore
//! //! Run with: cargo build --release --target wasm32-wasip2 -p greet
//! use schemars::JsonSchema;
//! use serde::Deserialize;
//! use work_guest_sdk::{tool, ToolError};
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Args {
//!     /// Who to greet.
//!     name: String,
//! }
//!
//! tool! {
//!     /// Greets someone by name.
//!     fn greet(args: Args) -> Result<String, ToolError> {
//!         work_guest_sdk::info!("greeting {}", args.name);
//!         Ok(format!("hello, {}", args.name))
//!     }
//! }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (the crate
//! is a `cdylib`) and register the `.wasm` with `work-engine register`.
//!
//! Inside a call, the functions of this crate talk to the engine: [`log`] and
//! the [`info!`]-style macros, [`progress`], [`emit`] for partial results,
//! [`cancelled`] and [`attempt`].
//!
//! [work-engine]: https://example.invalid/work-engine

use serde::Serialize;
use std::fmt;

// The generated bindings name this crate by its absolute path, which must
// also resolve from inside it.
extern crate self as work_guest_sdk;

#[doc(hidden)]
pub mod bindings {
    //! The `work:tool` world, bound once for every guest.
    #![allow(unsafe_code, reason = "wit-bindgen emits the canonical ABI glue")]
    #![allow(
        clippy::all,
        unused_qualifications,
        reason = "generated code is not ours to lint"
    )]
    wit_bindgen::generate!({
        path: "../wit",
        world: "tool",
        pub_export_macro: true,
        export_macro_name: "__export_tool_world",
        default_bindings_module: "::work_guest_sdk::bindings",
        runtime_path: "::work_guest_sdk::__private::wit_bindgen::rt",
    });
}

use bindings::work::tool::host;

/// Why a call did not produce a result; decides whether the engine retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    kind: ToolErrorKind,
    message: String,
}

/// The three ways a tool can fail, as in the WIT `tool-error` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolErrorKind {
    /// The arguments make no sense to the tool; not retried.
    InvalidArgs,
    /// A permanent failure; not retried.
    Failed,
    /// A transient failure; the engine may retry by the job's policy.
    Retryable,
}

impl ToolError {
    /// The arguments were valid JSON of the right shape but unusable.
    pub fn invalid_args(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::InvalidArgs, message)
    }

    /// The tool failed for good: retrying would fail the same way.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::Failed, message)
    }

    /// A transient failure worth another attempt.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::Retryable, message)
    }

    /// An error of the given kind.
    pub fn new(kind: ToolErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Which of the three kinds this is.
    pub fn kind(&self) -> ToolErrorKind {
        self.kind
    }

    /// The message the caller will see.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ToolError {}

/// A failed I/O operation is a permanent failure unless the OS says the
/// operation may succeed when tried again.
impl From<std::io::Error> for ToolError {
    fn from(err: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match err.kind() {
            Interrupted | WouldBlock | TimedOut => Self::retryable(err.to_string()),
            _ => Self::failed(err.to_string()),
        }
    }
}

impl From<ToolError> for bindings::work::tool::types::ToolError {
    fn from(err: ToolError) -> Self {
        use bindings::work::tool::types::ToolError as Wit;
        match err.kind {
            ToolErrorKind::InvalidArgs => Wit::InvalidArgs(err.message),
            ToolErrorKind::Failed => Wit::Failed(err.message),
            ToolErrorKind::Retryable => Wit::Retryable(err.message),
        }
    }
}

/// Severity of a log line.
pub use host::LogLevel;

/// Writes a line to the engine's log, tagged with this tool and call.
pub fn log(level: LogLevel, message: &str) {
    host::log(level, message);
}

/// Reports progress: `fraction` from 0.0 to 1.0 and a short message.
pub fn progress(fraction: f32, message: &str) {
    host::progress(fraction, message);
}

/// Streams a partial result to whoever watches the call.
///
/// # Errors
///
/// Fails when `partial` cannot be serialised to JSON.
pub fn emit<T: Serialize + ?Sized>(partial: &T) -> Result<(), ToolError> {
    let text = serde_json::to_string(partial)
        .map_err(|err| ToolError::failed(format!("cannot serialise partial result: {err}")))?;
    host::emit(&text);
    Ok(())
}

/// Whether the caller cancelled this call; a long loop should check it.
pub fn cancelled() -> bool {
    host::cancelled()
}

/// Which attempt this is: 1 for the first try.
pub fn attempt() -> u32 {
    host::attempt()
}

/// Logs a formatted line at [`LogLevel::Trace`].
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Trace, &format!($($arg)*)) };
}

/// Logs a formatted line at [`LogLevel::Debug`].
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Debug, &format!($($arg)*)) };
}

/// Logs a formatted line at [`LogLevel::Info`].
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Info, &format!($($arg)*)) };
}

/// Logs a formatted line at [`LogLevel::Warn`].
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Warn, &format!($($arg)*)) };
}

/// Logs a formatted line at [`LogLevel::Error`].
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Error, &format!($($arg)*)) };
}

/// Exports a function as the tool of this component.
///
/// The function takes one argument type (`Deserialize + JsonSchema`) and
/// returns `Result<T, ToolError>` with `T: Serialize + JsonSchema`. Its name
/// becomes the tool's name, its doc comment the tool's description, and the
/// crate's version the tool's version. See the [crate docs](crate) for an
/// example.
#[macro_export]
macro_rules! tool {
    (
        $(#[doc = $doc:literal])*
        fn $name:ident($args:ident : $args_ty:ty) -> Result<$ok:ty, $err:ty> $body:block
    ) => {
        $(#[doc = $doc])*
        fn $name($args: $args_ty) -> Result<$ok, $err> $body

        #[doc(hidden)]
        struct __WorkTool;

        impl $crate::bindings::Guest for __WorkTool {
            fn describe() -> $crate::bindings::ToolSpec {
                $crate::__private::describe::<$args_ty, $ok>(
                    stringify!($name),
                    env!("CARGO_PKG_VERSION"),
                    &[$($doc),*],
                )
            }

            fn call(args: String) -> Result<String, $crate::bindings::ToolError> {
                $crate::__private::call::<$args_ty, $ok, $err>(&args, $name)
            }
        }

        $crate::bindings::__export_tool_world!(__WorkTool with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub mod __private {
    //! Support for the [`tool!`](crate::tool) macro; not a public API.
    use super::{ToolError, bindings};
    use schemars::{JsonSchema, generate::SchemaSettings};
    use serde::{Serialize, de::DeserializeOwned};

    pub use wit_bindgen;

    /// Joins doc-comment lines into one description, as Markdown reads
    /// them: lines of a paragraph joined by spaces, paragraphs by a blank
    /// line.
    pub fn description(lines: &[&str]) -> String {
        lines
            .split(|line| line.trim().is_empty())
            .filter(|paragraph| !paragraph.is_empty())
            .map(|paragraph| {
                let words: Vec<&str> = paragraph.iter().map(|line| line.trim()).collect();
                words.join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    /// The JSON Schema of `T`, self-contained (no `$ref`s) as LLM
    /// function-calling formats expect.
    pub fn schema_of<T: JsonSchema>() -> serde_json::Value {
        let generator = SchemaSettings::draft2020_12()
            .with(|settings| settings.inline_subschemas = true)
            .into_generator();
        generator.into_root_schema_for::<T>().to_value()
    }

    pub fn describe<A: JsonSchema, R: JsonSchema>(
        name: &str,
        version: &str,
        doc: &[&str],
    ) -> bindings::ToolSpec {
        bindings::ToolSpec {
            name: name.to_owned(),
            version: version.to_owned(),
            description: description(doc),
            parameters: schema_of::<A>().to_string(),
            result: Some(schema_of::<R>().to_string()),
        }
    }

    pub fn call<A, R, E>(
        args: &str,
        function: impl FnOnce(A) -> Result<R, E>,
    ) -> Result<String, bindings::ToolError>
    where
        A: DeserializeOwned,
        R: Serialize,
        E: Into<ToolError>,
    {
        let args: A = serde_json::from_str(args)
            .map_err(|err| ToolError::invalid_args(format!("arguments: {err}")))?;
        let result = function(args).map_err(Into::into)?;
        serde_json::to_string(&result)
            .map_err(|err| ToolError::failed(format!("cannot serialise result: {err}")).into())
    }
}

#[cfg(test)]
mod tests {
    use super::__private::{description, schema_of};
    use schemars::JsonSchema;
    use serde::Deserialize;

    #[derive(Deserialize, JsonSchema)]
    #[expect(dead_code, reason = "only the schema is under test")]
    struct Args {
        /// How many times.
        count: u32,
        /// Which mode.
        mode: Mode,
    }

    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Fast,
        Slow,
    }

    #[test]
    fn doc_lines_become_a_trimmed_description() {
        assert_eq!(description(&[" Adds.", "", " Twice."]), "Adds.\n\nTwice.");
        assert_eq!(
            description(&[" Adds two", " numbers.", "", "", " Twice.", ""]),
            "Adds two numbers.\n\nTwice."
        );
        assert_eq!(description(&[]), "");
    }

    #[test]
    fn schema_is_inlined_and_carries_field_docs() {
        let schema = schema_of::<Args>();
        assert_eq!(schema["type"], "object");
        assert_eq!(
            schema["properties"]["count"]["description"],
            "How many times."
        );
        assert_eq!(
            schema["properties"]["mode"]["enum"],
            serde_json::json!(["fast", "slow"])
        );
        assert!(schema.get("$defs").is_none(), "{schema}");
    }
}
