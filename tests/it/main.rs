//! casebook's integration tests: one binary, one module per promise area.

mod bad_corpus;
mod cli;
mod conformance;
mod corrupt_open;
mod crash;
mod disk_full;
mod domain;
mod fuzz;
mod projections;
mod soak;
mod store_tamper;
mod two_processes;
