//! Crash-safe file writes.

use std::path::Path;

/// Writes `data` to `path` through a temporary file in `dir` and a rename,
/// so a crash or a concurrent writer never leaves a half-written file.
///
/// # Errors
///
/// The I/O error of creating `dir`, writing or renaming.
pub(crate) fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::now_v7()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
