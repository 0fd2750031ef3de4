//! Projections: folds, replay determinism, runner checkpoints.
