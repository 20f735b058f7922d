//! Run with: `cargo build --release --target wasm32-wasip2 -p file_read`, then
//! `work-engine register target/wasm32-wasip2/release/file_read.wasm --allow-dir ./docs:/data`
//! and `work-engine call file_read --args '{"path": "/data/architecture.md"}'`.
//!
//! The tool sees only the directories granted at registration; any other
//! path, `../` escapes included, fails with a `failed` tool error.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use work_guest_sdk::{ToolError, tool};

#[derive(Deserialize, JsonSchema)]
struct Args {
    /// Path of the file inside a granted directory, e.g. `/data/notes.txt`.
    path: String,
}

#[derive(Serialize, JsonSchema)]
struct File {
    path: String,
    bytes: usize,
    /// The file's text (invalid UTF-8 is replaced with U+FFFD).
    content: String,
}

tool! {
    /// Reads a text file from a directory the tool was granted.
    fn file_read(args: Args) -> Result<File, ToolError> {
        let data = std::fs::read(&args.path)
            .map_err(|err| ToolError::failed(format!("cannot read {}: {err}", args.path)))?;
        Ok(File {
            bytes: data.len(),
            content: String::from_utf8_lossy(&data).into_owned(),
            path: args.path,
        })
    }
}
