//! Registered tools, on disk in the data directory.
//!
//! ```text
//! DATA_DIR/
//!   components/<sha256>.wasm          each component once, by content
//!   cache/<sha256>-<engine>.cwasm     compiled artifacts (see runtime)
//!   tools/<name>/<version>.json       one manifest per registered version
//!                                     of a shared tool (every tenant's)
//!   tenants/<hex>/tools/<name>/<version>.json
//!                                     a tenant's own tools; <hex> is the
//!                                     tenant id's bytes in hex
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
    /// The tenant that owns it; absent for a shared tool, which every
    /// tenant sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl ToolManifest {
    /// Whose tools it is among.
    pub fn scope(&self) -> ToolScope<'_> {
        match &self.tenant {
            Some(tenant) => ToolScope::Tenant(tenant),
            None => ToolScope::Shared,
        }
    }

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

/// Whose tools an operation sees.
///
/// A tenant sees its own tools and the shared ones; where both have a tool
/// of the same name, its own. Registering and removing act on the scope's
/// own tools only: a tenant never changes a shared tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolScope<'a> {
    /// The operator's tools, visible to every tenant.
    Shared,
    /// One tenant's tools (and, for lookups, the shared ones).
    Tenant(&'a str),
}

impl<'a> ToolScope<'a> {
    /// The tenant, if any.
    pub fn tenant(self) -> Option<&'a str> {
        match self {
            Self::Shared => None,
            Self::Tenant(tenant) => Some(tenant),
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

    /// The `tools` directory of `scope`'s own tools. A tenant id may hold
    /// any printable character, so its directory is named by its bytes in
    /// hex: no id can reach outside it.
    fn tools_dir(&self, scope: ToolScope<'_>) -> PathBuf {
        match scope {
            ToolScope::Shared => self.root.join("tools"),
            ToolScope::Tenant(tenant) => {
                let hex: String = tenant.bytes().map(|b| format!("{b:02x}")).collect();
                self.root.join("tenants").join(hex).join("tools")
            }
        }
    }

    fn tool_dir(&self, scope: ToolScope<'_>, name: &str) -> PathBuf {
        self.tools_dir(scope).join(name)
    }

    fn manifest_path(&self, scope: ToolScope<'_>, name: &str, version: &str) -> PathBuf {
        self.tool_dir(scope, name).join(format!("{version}.json"))
    }

    fn component_path(&self, hash: &str) -> PathBuf {
        self.root.join("components").join(format!("{hash}.wasm"))
    }

    /// Stores a component and its manifest (in its tenant's tools, or the
    /// shared ones); returns the manifest it replaced, if that name and
    /// version existed there.
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
        let scope = manifest.scope();
        let path = self.manifest_path(scope, &manifest.name, &manifest.version);
        let previous = self.read_manifest(&path).ok();
        let json = serde_json::to_vec_pretty(manifest).map_err(std::io::Error::other)?;
        crate::atomic_file::write_atomically(&self.tool_dir(scope, &manifest.name), &path, &json)?;
        if let Some(previous) = &previous {
            self.collect_component(&previous.component)?;
        }
        Ok(previous)
    }

    /// The manifest of `tool` as `scope` sees it: its pinned version, or
    /// the newest; a tenant's own tool before a shared one of that name.
    ///
    /// # Errors
    ///
    /// [`Error::ToolNotFound`]; [`Error::CorruptRegistry`] for an unreadable
    /// manifest.
    pub fn get(&self, scope: ToolScope<'_>, tool: &ToolRef) -> Result<ToolManifest> {
        let not_found = || Error::ToolNotFound {
            name: tool.to_string(),
        };
        let scope = self.owner_of(scope, &tool.name)?;
        match &tool.version {
            Some(version) => {
                let path = self.manifest_path(scope, &tool.name, version);
                if !path.exists() {
                    return Err(not_found());
                }
                self.read_manifest(&path)
            }
            None => self
                .own_versions(scope, &tool.name)?
                .pop()
                .ok_or_else(not_found),
        }
    }

    /// Whose tool `name` is, as `scope` sees it: the tenant's when it has
    /// one of that name, else the shared one.
    fn owner_of<'a>(&self, scope: ToolScope<'a>, name: &str) -> Result<ToolScope<'a>> {
        if scope != ToolScope::Shared && self.own_versions(scope, name)?.is_empty() {
            return Ok(ToolScope::Shared);
        }
        Ok(scope)
    }

    /// Every registered version of `name` as `scope` sees it, oldest
    /// version first.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] or [`Error::CorruptRegistry`].
    pub fn versions(&self, scope: ToolScope<'_>, name: &str) -> Result<Vec<ToolManifest>> {
        let scope = self.owner_of(scope, name)?;
        self.own_versions(scope, name)
    }

    /// Every version of `name` among `scope`'s own tools.
    fn own_versions(&self, scope: ToolScope<'_>, name: &str) -> Result<Vec<ToolManifest>> {
        if check_name(name).is_err() {
            return Ok(Vec::new());
        }
        let dir = self.tool_dir(scope, name);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut manifests = self.manifests_in(&dir)?;
        manifests.sort_by(|a, b| version_order(&a.version, &b.version));
        Ok(manifests)
    }

    /// The manifests (`*.json`) in one tool's directory.
    fn manifests_in(&self, dir: &Path) -> Result<Vec<ToolManifest>> {
        let mut manifests = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "json") {
                manifests.push(self.read_manifest(&path)?);
            }
        }
        Ok(manifests)
    }

    /// The newest version of every tool `scope` sees, by name.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] or [`Error::CorruptRegistry`].
    pub fn list(&self, scope: ToolScope<'_>) -> Result<Vec<ToolManifest>> {
        let mut names = self.own_names(ToolScope::Shared)?;
        if scope != ToolScope::Shared {
            names.extend(self.own_names(scope)?);
            names.sort();
            names.dedup();
        }
        let mut newest = Vec::new();
        for name in names {
            if let Some(manifest) = self.versions(scope, &name)?.pop() {
                newest.push(manifest);
            }
        }
        Ok(newest)
    }

    /// The names of `scope`'s own tools, sorted.
    fn own_names(&self, scope: ToolScope<'_>) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(self.tools_dir(scope)) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(err) => return Err(err.into()),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Removes one version (`name@version`) or every version (`name`) of
    /// `scope`'s own tool, and the component and artifacts no other
    /// version uses.
    ///
    /// # Errors
    ///
    /// [`Error::ToolNotFound`] when nothing of `scope`'s own matched.
    pub fn remove(&self, scope: ToolScope<'_>, tool: &ToolRef) -> Result<Vec<ToolManifest>> {
        let mut removed = self.own_versions(scope, &tool.name)?;
        if let Some(version) = &tool.version {
            removed.retain(|manifest| &manifest.version == version);
        }
        if removed.is_empty() {
            return Err(Error::ToolNotFound {
                name: tool.to_string(),
            });
        }
        for manifest in &removed {
            std::fs::remove_file(self.manifest_path(scope, &manifest.name, &manifest.version))?;
        }
        if tool.version.is_none() || self.own_versions(scope, &tool.name)?.is_empty() {
            let _ = std::fs::remove_dir(self.tool_dir(scope, &tool.name));
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

    /// Every version of every tool, shared or a tenant's.
    fn list_all(&self) -> Result<Vec<ToolManifest>> {
        let mut dirs = vec![self.tools_dir(ToolScope::Shared)];
        if let Ok(tenants) = std::fs::read_dir(self.root.join("tenants")) {
            for tenant in tenants {
                dirs.push(tenant?.path().join("tools"));
            }
        }
        let mut all = Vec::new();
        for dir in dirs {
            let Ok(tools) = std::fs::read_dir(&dir) else {
                continue;
            };
            for tool in tools {
                let tool = tool?.path();
                if tool.is_dir() {
                    all.extend(self.manifests_in(&tool)?);
                }
            }
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
