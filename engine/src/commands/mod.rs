//! The `work-engine` command line: parsing and dispatch only; the work is
//! done by the library.

mod access;
mod call;
mod jobs;
mod register;
mod remote;
mod serve;
mod tools;

use crate::ToolHost;
use crate::runtime::RuntimeConfig;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Run untrusted tools in WebAssembly sandboxes.
#[derive(Debug, Parser)]
#[command(name = "work-engine", version, about, propagate_version = true)]
pub struct Cli {
    /// Data directory: registered tools, compiled artifacts, and the jobs
    /// `serve` keeps (jobs.db).
    #[arg(
        long,
        global = true,
        env = "WORK_ENGINE_DATA_DIR",
        default_value = ".work-engine"
    )]
    data_dir: PathBuf,

    /// A running `work-engine serve` to act through, instead of the data
    /// directory (`http://127.0.0.1:8080`).
    #[arg(long, global = true, env = "WORK_ENGINE_URL", value_name = "URL")]
    server: Option<String>,

    /// The API key to call `--server` with.
    #[arg(
        long,
        global = true,
        env = "WORK_ENGINE_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register a tool component (a .wasm built for wasm32-wasip2).
    Register(register::RegisterArgs),
    /// List, show or remove registered tools.
    Tools(tools::ToolsArgs),
    /// Call a tool and print its result.
    Call(call::CallArgs),
    /// Serve the HTTP API, keeping jobs in the data directory.
    Serve(serve::ServeArgs),
    /// Submit a job (through a server).
    Submit(jobs::SubmitArgs),
    /// List, read, cancel or wait for jobs.
    Jobs(jobs::JobsArgs),
    /// The scheduler's counts, resources and throughput (through a server).
    Stats(jobs::StatsArgs),
    /// The dead-letter queue: list, retry.
    Dlq(jobs::DlqArgs),
    /// API keys: create, list, revoke.
    Keys(access::KeysArgs),
    /// Show or set a tenant's quota (and weight).
    Quota(access::QuotaArgs),
}

/// Exit status of a command that ran but whose work failed (a failed call,
/// an unknown tool). Usage errors exit 2, as clap does.
const FAILED: u8 = 1;
const USAGE: u8 = 2;

/// Tunes the binary's allocator (mimalloc) for a long-running engine. Call
/// it first thing in `main`, before other threads start.
///
/// mimalloc gives pages it no longer uses back to the OS after 10 ms by
/// default. Under a steady stream of jobs the engine frees about as much
/// memory as it allocates (the memory store retires its oldest finished
/// jobs as new ones arrive), so pages went back to the OS and were faulted
/// in again, zeroed by the kernel 2 MiB at a time: 6 to 10 % of the CPU
/// time of `tool_call` jobs in `cargo bench --bench scheduler`, and 70,000
/// to 117,000 page faults in 8 seconds instead of 1,200 to 2,200. A delay
/// of one second keeps them through the churn and still gives memory back
/// soon after a burst.
pub fn tune_allocator() {
    /// `mi_option_purge_delay` in mimalloc v2's `mimalloc.h`, which the
    /// `-sys` crate does not name.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    const PURGE_DELAY_MS: std::ffi::c_long = 1000;
    #[allow(
        unsafe_code,
        reason = "mimalloc's C API has no safe wrapper for its options"
    )]
    // SAFETY: `mi_option_set` only stores the value; it is not thread safe,
    // which the caller's contract (before other threads start) covers.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS);
    }
}

/// Parses the command line, runs the command, and maps the outcome to an
/// exit code: 0 success, 1 failure, 2 usage error.
pub fn main() -> ExitCode {
    tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            errln!("{}", one_line(&err.to_string()));
            return ExitCode::from(USAGE);
        }
        Err(err) => {
            // --help and --version
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
    };
    init_tracing();
    // The server uses every core; a one-shot command needs one thread.
    let mut builder = if matches!(cli.command, Command::Serve(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            errln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(FAILED);
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            errln!("error: {err:#}");
            ExitCode::from(FAILED)
        }
    }
}

impl Cli {
    async fn run(self) -> anyhow::Result<ExitCode> {
        let remote = self
            .server
            .as_deref()
            .map(|url| remote::Remote::new(url, self.api_key.as_deref()));
        let server = remote.as_ref();
        let target = || jobs::Target::new(server, &self.data_dir);
        match self.command {
            Command::Register(args) => args.run(&self.data_dir, server).await,
            Command::Tools(args) => args.run(&self.data_dir, server).await,
            Command::Call(args) => args.run(&self.data_dir, server).await,
            Command::Serve(args) => args.run(&self.data_dir).await,
            Command::Submit(args) => args.run(&target()).await,
            Command::Jobs(args) => args.run(&target()).await,
            Command::Stats(args) => args.run(&target()).await,
            Command::Dlq(args) => args.run(&target()).await,
            Command::Keys(args) => args.run(&self.data_dir, server).await,
            Command::Quota(args) => args.run(&self.data_dir, server).await,
        }
    }
}

fn open_host(data_dir: &std::path::Path, config: RuntimeConfig) -> anyhow::Result<ToolHost> {
    use anyhow::Context;
    ToolHost::open(data_dir, config)
        .with_context(|| format!("cannot open data directory {}", data_dir.display()))
}

/// clap's message up to its usage block, folded onto one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .take_while(|line| !line.starts_with("Usage:"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes a line to stdout. A closed pipe (`work-engine … | head`) is an
/// error that `main` ends on quietly, where `println!` would panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}
use outln;

/// Writes a line to stderr, ignoring failure: with stderr gone there is
/// nowhere left to complain to.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
use errln;

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Whether `err` is stdout's reader having gone away.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Logs go to stderr; `WORK_ENGINE_LOG` (tracing's filter syntax) sets the
/// level, `warn` by default.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("WORK_ENGINE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_fold_to_one_line() {
        let message = "error: the following required arguments were not provided:\n  <TOOL>\n\nUsage: work-engine call <TOOL>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(message),
            "error: the following required arguments were not provided: <TOOL>"
        );
    }
}
