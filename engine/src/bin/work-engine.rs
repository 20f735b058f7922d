//! The `work-engine` command line; see `work-engine --help`.

fn main() -> std::process::ExitCode {
    work_engine::commands::main()
}
