//! The process's memory settings, shared by `casebook` (src/main.rs, at
//! load) and the benches that measure what it does (`append_stalls`):
//! transparent huge pages off, and freed memory returned after
//! [`PURGE_DELAY_MS`]. Both allocate with mimalloc.

/// mimalloc's `mi_option_e` (v3, as bundled by libmimalloc-sys 0.1.49):
/// how long freed memory waits before it goes back to the OS. The index is
/// checked against the option's documented default in src/main.rs's test.
pub(crate) const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// 1 ms rather than mimalloc's 1 s, so the peak resident set stays near
/// what the process holds. Not 0: in session az's runs that slowed the
/// timelines at 100k events (p50 +25%) and the replay (about 7%); in
/// session e it also slowed the import, which then built and dropped its
/// buffers batch after batch (docs/performance.md, "Huge pages off").
/// 10 ms from session e until session az, whose alternated runs gave 1 ms
/// a peak 4–9% lower (51.5 against 56.3 MB at 1M, 112.3 against 117.5 at
/// 10M) at about the same import rate (medians 1–4% lower, within the
/// runs' spread; docs/performance.md, "Session az").
const PURGE_DELAY_MS: std::ffi::c_long = 1;

/// mimalloc's `allow_thp` (same enum): whether it asks the kernel for
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`) on the memory it maps.
pub(crate) const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Whether the environment variable `name` is set, without allocating
/// (so that [`tune_memory`] can run before the allocator is first used).
fn env_is_set(name: &std::ffi::CStr) -> bool {
    // SAFETY: `getenv` reads the environment with a NUL-terminated name;
    // nothing changes the environment while this runs (at load, or in
    // `main` before any thread starts).
    unsafe { !libc::getenv(name.as_ptr()).is_null() }
}

/// Transparent huge pages off for this process, and freed memory returned
/// after [`PURGE_DELAY_MS`]. mimalloc's own environment variables, when set, win:
/// `MIMALLOC_ALLOW_THP` (1 keeps huge pages) and `MIMALLOC_PURGE_DELAY`
/// (milliseconds), so either can be measured without a rebuild.
///
/// With huge pages, every purge of a freed 2 MiB region is followed, at the
/// next allocation there, by a fault that zeroes the whole 2 MiB again: a
/// profile of the 1M-event import spent a tenth of the planner thread's CPU
/// in `clear_page_erms` under huge-page faults. With 4 KiB pages only the
/// pages touched are faulted in, and the resident set is smaller too
/// (docs/performance.md, "Huge pages off").
pub(crate) fn tune_memory() {
    // SAFETY: process-wide settings made before any other thread starts
    // (and, on Linux, before the first allocation: at load);
    // `prctl(PR_SET_THP_DISABLE)` only changes how later page faults are
    // served, and a failure (an old kernel) leaves the default.
    unsafe {
        if !env_is_set(c"MIMALLOC_ALLOW_THP") {
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
            libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
        }
        if !env_is_set(c"MIMALLOC_PURGE_DELAY") {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}
