//! `work-engine tools [list | show NAME | remove NAME]`

use super::{open_host, outln, print_json};
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
    pub(super) fn run(self, data_dir: &Path) -> anyhow::Result<ExitCode> {
        let host = open_host(data_dir, RuntimeConfig::default())?;
        match self.action.unwrap_or(Action::List) {
            Action::List => {
                let tools = host.list()?;
                if self.json {
                    print_json(&tools)?;
                } else if tools.is_empty() {
                    outln!("no tools registered in {}", data_dir.display());
                } else {
                    let width = tools.iter().map(|t| t.id().len()).max().unwrap_or(0);
                    for tool in &tools {
                        let summary = tool.description.lines().next().unwrap_or("");
                        outln!("{:width$}  {summary}", tool.id());
                    }
                }
            }
            Action::Show { name } => {
                let versions = host.versions(&name)?;
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
                let removed = host.remove(&name)?;
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
