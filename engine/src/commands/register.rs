//! `work-engine register TOOL.wasm`

use super::remote::{Remote, query_string};
use super::{open_host, outln, print_json};
use crate::registry::ToolManifest;
use crate::runtime::{DirGrant, Grants, RuntimeConfig};
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub(super) struct RegisterArgs {
    /// The component file.
    wasm: PathBuf,
    /// Preopen a host directory for the tool: HOST[:GUEST][:rw], read-only
    /// unless `:rw`. Repeatable.
    #[arg(long = "allow-dir", value_name = "HOST[:GUEST][:rw]")]
    allow_dir: Vec<DirGrant>,
    /// Let the tool see this environment variable (its value at call time).
    /// Repeatable.
    #[arg(long = "allow-env", value_name = "NAME")]
    allow_env: Vec<String>,
    /// Print the stored manifest as JSON.
    #[arg(long)]
    json: bool,
}

impl RegisterArgs {
    pub(super) async fn run(
        self,
        data_dir: &Path,
        server: Option<&Remote>,
    ) -> anyhow::Result<ExitCode> {
        let wasm = std::fs::read(&self.wasm)
            .with_context(|| format!("cannot read {}", self.wasm.display()))?;
        let (manifest, replaced) = match server {
            Some(remote) => {
                let mut grants: Vec<(&str, Option<String>)> = Vec::new();
                for dir in &self.allow_dir {
                    grants.push(("allow_dir", Some(dir.to_string())));
                }
                for name in &self.allow_env {
                    grants.push(("allow_env", Some(name.clone())));
                }
                let manifest = remote
                    .post_bytes(&format!("/v1/tools{}", query_string(&grants)), wasm)
                    .await
                    .with_context(|| format!("cannot register {}", self.wasm.display()))?;
                (serde_json::from_value::<ToolManifest>(manifest)?, false)
            }
            None => {
                let host = open_host(data_dir, RuntimeConfig::default())?;
                let grants = Grants {
                    dirs: self.allow_dir,
                    env: self.allow_env,
                };
                let registered = host
                    .register(&wasm, grants)
                    .await
                    .with_context(|| format!("cannot register {}", self.wasm.display()))?;
                (registered.manifest, registered.replaced.is_some())
            }
        };
        let manifest = &manifest;
        if self.json {
            print_json(manifest)?;
        } else {
            let verb = if replaced { "replaced" } else { "registered" };
            outln!(
                "{verb} {} ({} bytes, sha256 {})",
                manifest.id(),
                manifest.component_bytes,
                &manifest.component[..12]
            );
            if !manifest.description.is_empty() {
                outln!("  {}", manifest.description.replace('\n', "\n  "));
            }
            for dir in &manifest.grants.dirs {
                let mode = if dir.writable {
                    "read-write"
                } else {
                    "read-only"
                };
                outln!("  grants {} at {} ({mode})", dir.host.display(), dir.guest);
            }
            for name in &manifest.grants.env {
                outln!("  grants environment variable {name}");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
