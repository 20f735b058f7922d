//! Compiled components on disk, so a restart does not recompile.
//!
//! Compiling a component with Cranelift takes around 100 ms (release) to
//! seconds (debug builds); loading a compiled artifact with
//! `deserialize_file` (mmap) takes well under a millisecond. Artifacts are
//! keyed by the component's SHA-256 *and* a hash of the engine's
//! configuration, because an artifact only loads into an engine configured
//! the same way (fuel, epochs, wasmtime version, CPU features).

use super::{Runtime, error_chain};
use crate::atomic_file::write_atomically;
use crate::error::{Error, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::Path;
use wasmtime::component::Component;

/// Where a loaded component's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactSource {
    /// Compiled now (and cached, when the runtime has a cache directory).
    Compiled,
    /// Loaded from the on-disk cache: no compilation.
    Cached,
}

/// Hex SHA-256 of `bytes`: a component's identity in the registry and cache.
pub(crate) fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn engine_key(runtime: &Runtime) -> String {
    // SipHash with fixed keys: stable across processes of one build, which
    // is all the key needs (a new build may change the engine anyway).
    #[expect(
        deprecated,
        reason = "SipHasher is the stable, keyed-by-zero hasher we want"
    )]
    let mut hasher = std::hash::SipHasher::new();
    runtime
        .engine
        .precompile_compatibility_hash()
        .hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

pub(crate) fn load_or_compile(
    runtime: &Runtime,
    bytes: &[u8],
    hash: &str,
) -> Result<(Component, ArtifactSource)> {
    let Some(dir) = &runtime.config.cache_dir else {
        return Ok((runtime.compile(bytes)?, ArtifactSource::Compiled));
    };
    let path = dir.join(format!("{hash}-{}.cwasm", engine_key(runtime)));
    if path.exists() {
        match deserialize(runtime, &path) {
            Ok(component) => return Ok((component, ArtifactSource::Cached)),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %error_chain(&err), "discarding unusable cached artifact");
            }
        }
    }
    let component = runtime.compile(bytes)?;
    let artifact = component
        .serialize()
        .map_err(|err| Error::runtime("cannot serialise compiled component", &err))?;
    write_atomically(dir, &path, &artifact)?;
    Ok((component, ArtifactSource::Compiled))
}

#[expect(
    unsafe_code,
    reason = "deserialize_file trusts its input; the cache directory holds only what this engine wrote, keyed by its configuration"
)]
fn deserialize(runtime: &Runtime, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was written by `Component::serialize` of an engine
    // with the same compatibility hash (it is in the file name), and the data
    // directory is as trusted as the engine binary itself.
    unsafe { Component::deserialize_file(&runtime.engine, path) }
}
