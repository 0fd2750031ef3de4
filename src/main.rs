// mimalloc instead of glibc's malloc: the engine's hot paths (import,
// replay, timeline) allocate many small short-lived buffers, and a
// profile of `casebook bench` spent about a fifth of its CPU in glibc's
// malloc and free. Figures in docs/performance.md ("Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_e` (v3, as bundled by libmimalloc-sys 0.1.49):
/// return freed memory to the OS at once rather than after a second, so the
/// peak resident set stays near what the process holds. The index is
/// checked against the option's documented default in a test below.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // SAFETY: sets a process-wide allocator option; no other thread runs yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    casebook_cli::main()
}

#[cfg(test)]
mod tests {
    #[test]
    fn purge_delay_option_index_is_the_bundled_one() {
        // SAFETY: reads a process-wide allocator option.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 1000, "mimalloc v3 purge_delay defaults to 1000 ms");
    }
}
