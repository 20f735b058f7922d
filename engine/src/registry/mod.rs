//! Registered tools, on disk in the data directory.
//!
//! ```text
//! DATA_DIR/
//!   components/<sha256>.wasm          each component once, by content
//!   cache/<sha256>-<engine>.cwasm     compiled artifacts (see runtime)
//!   tools/<name>/<version>.json       one manifest per registered version
//! ```
//!
//! Every file is written to a temporary name and renamed into place, so a
//! crash leaves the old or the new state, never a torn one. Names and
//! versions are checked against a strict alphabet before they touch a path.

pub(crate) mod schema;

use crate::error::{Error, Result};
use crate::runtime::Grants;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Everything the engine keeps about one registered version of a tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ToolManifest {
    /// The tool's name.
    pub name: String,
    /// This version.
    pub version: String,
    /// What the tool does.
    pub description: String,
    /// JSON Schema of the arguments, normalised.
    pub parameters: serde_json::Value,
    /// JSON Schema of the result, when the tool declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// SHA-256 of the component.
    pub component: String,
    /// Size of the component in bytes.
    pub component_bytes: u64,
    /// Capabilities granted at registration.
    #[serde(default)]
    pub grants: Grants,
    /// When this version was registered (RFC 3339).
    pub registered_at: String,
}

impl ToolManifest {
    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The tool as a function declaration for an LLM API.
    pub fn declaration(&self, format: DeclarationFormat) -> serde_json::Value {
        let (name, description, parameters) = (&self.name, &self.description, &self.parameters);
        match format {
            DeclarationFormat::Openai => serde_json::json!({
                "type": "function",
                "function": {"name": name, "description": description, "parameters": parameters},
            }),
            DeclarationFormat::Gemini => serde_json::json!({
                "name": name, "description": description, "parameters": parameters,
            }),
            DeclarationFormat::Mcp => serde_json::json!({
                "name": name, "description": description, "inputSchema": parameters,
            }),
        }
    }
}

/// The function-declaration formats of LLM tool calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum DeclarationFormat {
    /// OpenAI's `tools` entry: `{"type": "function", "function": {...}}`.
    Openai,
    /// Gemini's `FunctionDeclaration`: `{"name", "description", "parameters"}`.
    Gemini,
    /// A Model Context Protocol tool: `{"name", "description", "inputSchema"}`.
    Mcp,
}

/// A tool as callers name it: `name` (the newest version) or
/// `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ToolRef {
    /// The tool's name.
    pub name: String,
    /// A pinned version, or `None` for the newest.
    pub version: Option<String>,
}

impl FromStr for ToolRef {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let not_found = || Error::ToolNotFound {
            name: text.to_owned(),
        };
        let (name, version) = match text.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (text, None),
        };
        check_name(name).map_err(|_| not_found())?;
        if let Some(version) = version {
            check_version(version).map_err(|_| not_found())?;
        }
        Ok(Self {
            name: name.to_owned(),
            version: version.map(str::to_owned),
        })
    }
}

impl fmt::Display for ToolRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(version) => write!(f, "{}@{version}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Tool names follow the function-name rule of LLM tool calling.
pub(crate) fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tool name {name:?} must be 1 to 64 of a-z, A-Z, 0-9, _ and -"
        ))
    }
}

pub(crate) fn check_version(version: &str) -> std::result::Result<(), String> {
    let ok = (1..=64).contains(&version.len())
        && !version.starts_with('.')
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tool version {version:?} must be 1 to 64 of a-z, A-Z, 0-9, '.', '_', '+' and '-'"
        ))
    }
}

/// Orders versions: by semver where both parse, else as text.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        (Ok(_), Err(_)) => std::cmp::Ordering::Greater,
        (Err(_), Ok(_)) => std::cmp::Ordering::Less,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// The on-disk registry of one data directory.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

impl Registry {
    /// Opens (creating when needed) the registry under `data_dir`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the directories cannot be created.
    pub fn open(data_dir: impl Into<PathBuf>) -> Result<Self> {
        let root = data_dir.into();
        for dir in ["components", "cache", "tools"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(Self { root })
    }

    /// Where compiled artifacts go.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    fn tool_dir(&self, name: &str) -> PathBuf {
        self.root.join("tools").join(name)
    }

    fn manifest_path(&self, name: &str, version: &str) -> PathBuf {
        self.tool_dir(name).join(format!("{version}.json"))
    }

    fn component_path(&self, hash: &str) -> PathBuf {
        self.root.join("components").join(format!("{hash}.wasm"))
    }

    /// Stores a component and its manifest; returns the manifest it
    /// replaced, if that name and version existed.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] on a write failure.
    pub fn put(&self, manifest: &ToolManifest, component: &[u8]) -> Result<Option<ToolManifest>> {
        let component_path = self.component_path(&manifest.component);
        if !component_path.exists() {
            crate::atomic_file::write_atomically(
                &self.root.join("components"),
                &component_path,
                component,
            )?;
        }
        let path = self.manifest_path(&manifest.name, &manifest.version);
        let previous = self.read_manifest(&path).ok();
        let json = serde_json::to_vec_pretty(manifest).map_err(std::io::Error::other)?;
        crate::atomic_file::write_atomically(&self.tool_dir(&manifest.name), &path, &json)?;
        if let Some(previous) = &previous {
            self.collect_component(&previous.component)?;
        }
        Ok(previous)
    }

    /// The manifest of `tool`: its pinned version, or the newest.
    ///
    /// # Errors
    ///
    /// [`Error::ToolNotFound`]; [`Error::CorruptRegistry`] for an unreadable
    /// manifest.
    pub fn get(&self, tool: &ToolRef) -> Result<ToolManifest> {
        let not_found = || Error::ToolNotFound {
            name: tool.to_string(),
        };
        match &tool.version {
            Some(version) => {
                let path = self.manifest_path(&tool.name, version);
                if !path.exists() {
                    return Err(not_found());
                }
                self.read_manifest(&path)
            }
            None => self.versions(&tool.name)?.pop().ok_or_else(not_found),
        }
    }

    /// Every registered version of `name`, oldest version first.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] or [`Error::CorruptRegistry`].
    pub fn versions(&self, name: &str) -> Result<Vec<ToolManifest>> {
        if check_name(name).is_err() {
            return Ok(Vec::new());
        }
        let dir = self.tool_dir(name);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut manifests = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "json") {
                manifests.push(self.read_manifest(&path)?);
            }
        }
        manifests.sort_by(|a, b| version_order(&a.version, &b.version));
        Ok(manifests)
    }

    /// The newest version of every tool, by name.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] or [`Error::CorruptRegistry`].
    pub fn list(&self) -> Result<Vec<ToolManifest>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.root.join("tools"))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        let mut newest = Vec::new();
        for name in names {
            if let Some(manifest) = self.versions(&name)?.pop() {
                newest.push(manifest);
            }
        }
        Ok(newest)
    }

    /// Removes one version (`name@version`) or every version (`name`), and
    /// the component and artifacts no other version uses.
    ///
    /// # Errors
    ///
    /// [`Error::ToolNotFound`] when nothing matched.
    pub fn remove(&self, tool: &ToolRef) -> Result<Vec<ToolManifest>> {
        let removed = match &tool.version {
            Some(_) => vec![self.get(tool)?],
            None => self.versions(&tool.name)?,
        };
        if removed.is_empty() {
            return Err(Error::ToolNotFound {
                name: tool.to_string(),
            });
        }
        for manifest in &removed {
            std::fs::remove_file(self.manifest_path(&manifest.name, &manifest.version))?;
        }
        if tool.version.is_none() || self.versions(&tool.name)?.is_empty() {
            let _ = std::fs::remove_dir(self.tool_dir(&tool.name));
        }
        for manifest in &removed {
            self.collect_component(&manifest.component)?;
        }
        Ok(removed)
    }

    /// The component bytes a manifest refers to.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptRegistry`] when the file is gone.
    pub fn component(&self, manifest: &ToolManifest) -> Result<Vec<u8>> {
        let path = self.component_path(&manifest.component);
        std::fs::read(&path).map_err(|err| Error::CorruptRegistry {
            path,
            reason: err.to_string(),
        })
    }

    fn read_manifest(&self, path: &Path) -> Result<ToolManifest> {
        let corrupt = |reason: String| Error::CorruptRegistry {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|err| corrupt(err.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|err| corrupt(err.to_string()))
    }

    /// Deletes a component and its compiled artifacts once no manifest
    /// refers to it.
    pub(crate) fn collect_component(&self, hash: &str) -> Result<()> {
        for manifest in self.list_all()? {
            if manifest.component == hash {
                return Ok(());
            }
        }
        let _ = std::fs::remove_file(self.component_path(hash));
        for entry in std::fs::read_dir(self.cache_dir())? {
            let path = entry?.path();
            let is_artifact = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(hash));
            if is_artifact {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }

    fn list_all(&self) -> Result<Vec<ToolManifest>> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(self.root.join("tools"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            all.extend(self.versions(&name)?);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_refs_parse_and_reject_path_tricks() {
        let pinned: ToolRef = "calc@1.2.0".parse().unwrap();
        assert_eq!(pinned.version.as_deref(), Some("1.2.0"));
        assert!("calc".parse::<ToolRef>().unwrap().version.is_none());
        for bad in ["", "../x", "a/b", "calc@", "calc@../1", "calc@.x", "a b"] {
            assert!(bad.parse::<ToolRef>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn versions_order_by_semver() {
        let mut versions = vec!["1.10.0", "1.2.0", "0.9.0", "dev"];
        versions.sort_by(|a, b| version_order(a, b));
        assert_eq!(versions, ["dev", "0.9.0", "1.2.0", "1.10.0"]);
    }
}
