//! Builds every guest (example tools and test fixtures) for `wasm32-wasip2`
//! in one batched `cargo build`, into a target directory of its own under
//! `OUT_DIR`, and writes a path constant for each.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOOLS: &[&str] = &["calculator", "text_stats", "file_read"];
const FIXTURES: &[&str] = &[
    "infinite_loop",
    "memory_hog",
    "trap",
    "flaky",
    "chatty",
    "recurse",
    "big_output",
    "sandbox_probe",
    "misbehave",
];
const TARGET: &str = "wasm32-wasip2";

fn main() {
    if let Err(message) = build() {
        #[expect(clippy::panic, reason = "a build script reports failure by panicking")]
        {
            panic!("\n\n{message}\n\n");
        }
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .ok_or("tests/artifacts is not two levels below the workspace root")?
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let target_dir = out_dir.join("guests");

    for dir in ["guest-sdk", "wit", "tools", "tests/fixtures", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }

    ensure_target()?;

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    for name in TOOLS.iter().chain(FIXTURES) {
        cmd.args(["-p", name]);
    }
    // The outer build's settings are for the host, not for the guests.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .map_err(|err| format!("cannot run cargo to build the guests: {err}"))?;
    if !status.success() {
        return Err(format!(
            "building the guest components failed ({status}); the error is above"
        ));
    }

    let mut code = String::new();
    let wasm_dir = target_dir.join(TARGET).join("release");
    for name in TOOLS.iter().chain(FIXTURES) {
        let path = wasm_dir.join(format!("{name}.wasm"));
        if !path.exists() {
            return Err(format!("cargo built no {}", path.display()));
        }
        code.push_str(&format!(
            "/// Path of the `{name}` component.\npub const {}: &str = {:?};\n",
            name.to_uppercase(),
            path.display().to_string()
        ));
    }
    code.push_str(&foreach("foreach_tool", TOOLS));
    code.push_str(&foreach("foreach_fixture", FIXTURES));
    fs::write(out_dir.join("guests.rs"), code).map_err(|e| e.to_string())?;
    Ok(())
}

/// Installs the target with rustup when it is missing, or says how to.
fn ensure_target() -> Result<(), String> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|err| format!("cannot run rustc: {err}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(TARGET).exists() {
        return Ok(());
    }
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .map(|status| status.success())
        .unwrap_or(false);
    if added {
        Ok(())
    } else {
        Err(format!(
            "the {TARGET} target is missing and rustup could not add it: run `rustup target add {TARGET}`"
        ))
    }
}

/// A macro that calls `$mac!(name)` for each guest, so a test module can
/// fail to compile when a guest has no test.
fn foreach(macro_name: &str, names: &[&str]) -> String {
    let calls: String = names
        .iter()
        .map(|n| format!("        $mac!({n});\n"))
        .collect();
    format!(
        "/// Calls `$mac!(name)` once per guest.\n#[macro_export]\nmacro_rules! {macro_name} {{\n    ($mac:ident) => {{\n{calls}    }};\n}}\n"
    )
}
