//! casebook's integration tests: one binary, one module per promise area.

mod cli;
mod conformance;
mod domain;
mod privacy;
mod projections;
mod store_tamper;
