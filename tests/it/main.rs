//! casebook's integration tests: one binary, one module per promise area.

mod bad_corpus;
mod cli;
mod conformance;
mod crash;
mod domain;
mod projections;
mod store_tamper;
