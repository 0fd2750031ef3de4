// mimalloc instead of glibc's malloc: the engine's hot paths (import,
// replay, timeline) allocate many small short-lived buffers, and a
// profile of `casebook bench` spent about a fifth of its CPU in glibc's
// malloc and free. Figures in docs/performance.md ("Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod memory;

use memory::tune_memory;

fn main() -> std::process::ExitCode {
    // On Linux, [`tune_memory`] ran before `main`, from `.init_array`
    // (not in the unit tests' binary, whose `main` does not run).
    #[cfg(any(not(target_os = "linux"), test))]
    tune_memory();
    casebook_cli::main()
}

/// [`tune_memory`] run by the C runtime when the program is loaded,
/// before the Rust runtime's first allocation (its main thread's
/// information, made before `main`): called from `main`, it came after
/// mimalloc had mapped its first memory with huge pages allowed, and the
/// process started with 4 MiB of huge pages resident (two faults that
/// zero 2 MiB each), 3.6 MB more than with them off from the start
/// (docs/performance.md, "Session an"). Not in the unit tests' binary,
/// whose test reads mimalloc's defaults.
#[cfg(all(target_os = "linux", not(test)))]
#[used]
#[link_section = ".init_array"]
static TUNE_MEMORY_AT_LOAD: extern "C" fn() = tune_memory_at_load;

#[cfg(all(target_os = "linux", not(test)))]
extern "C" fn tune_memory_at_load() {
    tune_memory();
}

#[cfg(test)]
mod tests {
    #[test]
    fn option_indices_are_the_bundled_ones() {
        // SAFETY: reads process-wide allocator options.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::memory::MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 1000, "mimalloc v3 purge_delay defaults to 1000 ms");
        // The option after `allow_thp` is `minimal_purge_size`, default 0;
        // `allow_thp` itself defaults to 1 on Linux.
        let thp = unsafe { libmimalloc_sys::mi_option_get(super::memory::MI_OPTION_ALLOW_THP) };
        assert_eq!(thp, 1, "mimalloc v3 allow_thp defaults to 1");
    }
}
