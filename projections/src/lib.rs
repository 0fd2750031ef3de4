//! casebook-projections: folds over the log.
