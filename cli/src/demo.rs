//! `casebook demo`: a synthetic school year.
