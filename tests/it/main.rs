//! casebook's integration tests: one binary, one module per promise area.

mod bench;
mod cli;
mod conformance;
mod domain;
mod projections;
mod store_tamper;
