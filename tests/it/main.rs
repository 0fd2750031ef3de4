//! casebook's integration tests: one binary, one module per promise area.

mod access;
mod bad_corpus;
mod bench;
mod bench_pg;
mod cli;
mod conformance;
mod corrupt_open;
mod crash;
mod disk_full;
mod domain;
mod engines;
mod fuzz;
mod import_batch;
mod pg;
mod pg_multiprocess;
mod pg_scaling;
mod privacy;
mod projections;
mod segment;
mod segment_tamper;
mod soak;
mod store_tamper;
mod timeline_read;
mod two_processes;

/// A multi-threaded runtime of two workers, as the CLI's.
pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs a future to its end on a runtime of its own (sync tests).
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}
