//! The embedded engines behind one door, for tools and tests that open a
//! store directory without caring which engine wrote it (the CLI's own
//! choice of engine is `cli/src/backend.rs`).

use std::path::Path;
use std::sync::Arc;

use super::segment::{is_segment_store, SegmentStore};
use super::sled::SledStore;
use super::EventStore;
use crate::error::StoreError;

/// The embedded engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sled,
    Segment,
}

/// The engine of the store in `dir`, if it holds one.
pub fn detect(dir: &Path) -> Option<Engine> {
    if is_segment_store(dir) {
        Some(Engine::Segment)
    } else if dir.join("db").exists() || dir.join("conf").exists() {
        Some(Engine::Sled)
    } else {
        None
    }
}

/// The log of `school` in the store at `dir`: its engine detected, or
/// `engine` for a store that does not exist yet (created when `create`).
pub fn open_log(
    dir: &Path,
    school: &str,
    engine: Engine,
    create: bool,
) -> Result<Arc<dyn EventStore>, StoreError> {
    let log: Arc<dyn EventStore> = match detect(dir).unwrap_or(engine) {
        Engine::Sled => SledStore::open(dir, create)?.log(school)?,
        Engine::Segment => SegmentStore::open(dir, create)?.log(school)?,
    };
    Ok(log)
}
