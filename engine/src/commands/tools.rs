//! `work-engine tools [list | show NAME | remove NAME]`

use super::remote::Remote;
use super::{open_host, outln, print_json};
use crate::ToolHost;
use crate::registry::{ToolManifest, ToolScope};
use crate::runtime::RuntimeConfig;
use clap::{Args, Subcommand};
use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub(super) struct ToolsArgs {
    #[command(subcommand)]
    action: Option<Action>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// The newest version of every tool (the default).
    List,
    /// Every version of one tool, with its schema and grants.
    Show {
        /// The tool's name.
        name: String,
    },
    /// Remove NAME (every version) or NAME@VERSION.
    Remove {
        /// `name` or `name@version`.
        name: String,
    },
}

impl ToolsArgs {
    pub(super) async fn run(
        self,
        data_dir: &Path,
        server: Option<&Remote>,
    ) -> anyhow::Result<ExitCode> {
        let source = match server {
            Some(remote) => Source::Server(remote.clone()),
            None => Source::Local(Box::new(open_host(data_dir, RuntimeConfig::default())?)),
        };
        match self.action.unwrap_or(Action::List) {
            Action::List => {
                let tools = source.list().await?;
                if self.json {
                    print_json(&tools)?;
                } else if tools.is_empty() {
                    outln!("no tools registered");
                } else {
                    let width = tools.iter().map(|t| t.id().len()).max().unwrap_or(0);
                    for tool in &tools {
                        let summary = tool.description.lines().next().unwrap_or("");
                        outln!("{:width$}  {summary}", tool.id());
                    }
                }
            }
            Action::Show { name } => {
                let versions = source.versions(&name).await?;
                if self.json {
                    print_json(&versions)?;
                } else {
                    for tool in &versions {
                        outln!("{}", tool.id());
                        outln!(
                            "  description: {}",
                            tool.description.replace('\n', "\n    ")
                        );
                        outln!(
                            "  component:   sha256 {} ({} bytes)",
                            tool.component,
                            tool.component_bytes
                        );
                        outln!("  registered:  {}", tool.registered_at);
                        for dir in &tool.grants.dirs {
                            outln!("  grant:       {dir}");
                        }
                        for env in &tool.grants.env {
                            outln!("  grant:       env {env}");
                        }
                        let schema = serde_json::to_string_pretty(&tool.parameters)?;
                        outln!("  parameters:  {}", schema.replace('\n', "\n  "));
                    }
                }
            }
            Action::Remove { name } => {
                let removed = source.remove(&name).await?;
                if self.json {
                    print_json(&removed)?;
                } else {
                    for tool in &removed {
                        outln!("removed {}", tool.id());
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Where the tools are: the data directory's registry, or a server's.
enum Source {
    Local(Box<ToolHost>),
    Server(Remote),
}

impl Source {
    async fn list(&self) -> anyhow::Result<Vec<ToolManifest>> {
        Ok(match self {
            Self::Local(host) => host.list(ToolScope::Shared)?,
            Self::Server(remote) => serde_json::from_value(remote.get("/v1/tools").await?)?,
        })
    }

    /// Every version locally; the newest through a server.
    async fn versions(&self, name: &str) -> anyhow::Result<Vec<ToolManifest>> {
        Ok(match self {
            Self::Local(host) => host.versions(ToolScope::Shared, name)?,
            Self::Server(remote) => {
                let mut details = remote.get(&format!("/v1/tools/{name}")).await?;
                if let Some(details) = details.as_object_mut() {
                    details.remove("versions");
                }
                vec![serde_json::from_value(details)?]
            }
        })
    }

    async fn remove(&self, name: &str) -> anyhow::Result<Vec<ToolManifest>> {
        Ok(match self {
            Self::Local(host) => host.remove(ToolScope::Shared, name)?,
            Self::Server(remote) => {
                serde_json::from_value(remote.delete(&format!("/v1/tools/{name}")).await?)?
            }
        })
    }
}
