//! The process's memory settings, shared by `casebook` (src/main.rs, at
//! load) and the benches that measure what it does (`append_stalls`):
//! transparent huge pages off, and freed memory returned after
//! [`PURGE_DELAY_MS`]. Both allocate with mimalloc.

/// mimalloc's `mi_option_e` (v3, as bundled by libmimalloc-sys 0.1.49):
/// how long freed memory waits before it goes back to the OS. The index is
/// checked against the option's documented default in src/main.rs's test.
pub(crate) const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// 10 ms rather than mimalloc's 1 s, so the peak resident set stays near
/// what the process holds (the bench's 1M-event run stays under 200 MB),
/// and rather than 0, which returned and faulted in again the same memory
/// batch after batch of an import (docs/performance.md, "Huge pages off")
/// and slowed timelines at 100k events by a quarter (session az). Session
/// az measured 1 ms too: peaks 4–9% lower at 100k to 10M events, but the
/// import of 30M events 10% slower (its planning and writing both), with
/// the same peak there; not kept (docs/performance.md, "Session az").
const PURGE_DELAY_MS: std::ffi::c_long = 10;

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
