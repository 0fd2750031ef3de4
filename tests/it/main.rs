//! casebook's integration tests: one binary, one module per promise area.

mod cli;
mod conformance;
mod domain;
mod pg;
mod pg_multiprocess;
mod pg_scaling;
mod projections;
mod store_tamper;
