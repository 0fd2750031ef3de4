//! Validation rules of `decide`, one test per rule.
