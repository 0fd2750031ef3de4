//! casebook's integration tests: one binary, one module per promise area.

mod domain;
mod projections;
