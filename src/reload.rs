//! The holder of the current `Dataset`.
//!
//! Readers take a snapshot with one atomic load (`arc-swap`) and keep using it for the
//! whole request, so a dataset swapped in mid-request never mixes two versions. Until
//! the first load finishes the slot is empty and data routes answer 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwapOption, Guard};

use crate::dataset::Dataset;

#[derive(Default)]
pub struct DatasetSlot {
    current: ArcSwapOption<Dataset>,
    generation: AtomicU64,
}

impl DatasetSlot {
    /// A cheap snapshot for the request hot path (no reference count traffic in the
    /// common case).
    pub fn load(&self) -> Guard<Option<Arc<Dataset>>> {
        self.current.load()
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Makes `dataset` the one every new request sees, numbering it with the next
    /// generation (1 for the first load).
    pub fn install(&self, mut dataset: Dataset) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        dataset.set_generation(generation);
        self.current.store(Some(Arc::new(dataset)));
        generation
    }
}
