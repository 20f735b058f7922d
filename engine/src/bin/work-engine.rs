//! The `work-engine` command line; see `work-engine --help`.

/// mimalloc rather than the system allocator: the engine allocates and
/// frees small objects on one thread and another all the time, which
/// glibc's allocator serves with lock contention between its arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    work_engine::commands::main()
}
