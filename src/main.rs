//! The `flotilla` binary: everything happens in [`flotilla::cli`].

/// jemalloc, for a long-running agent: its memory goes back to the system after each round's
/// peak, where glibc's arenas keep it (see ARCHITECTURE.md for the figures).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts: one arena (the agent's work is a few threads at a
/// time; per-thread arenas each keep their own peak), no per-thread caches (Tokio's blocking
/// pool grows to some fifty threads in a round of fifty tenants, and each thread's cache kept
/// its freed blocks: 10 MiB of the peak at 10,000 objects), dirty pages returned after a second,
/// and no muzzy state. `_RJEM_MALLOC_CONF` in the environment still overrides it.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 60] =
    b"narenas:1,tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> std::process::ExitCode {
    flotilla::cli::main()
}
