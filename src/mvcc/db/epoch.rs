//! Reader epochs: which published transactions live `ReadSnapshot`s can still see.
//!
//! This atomic table is the one structure shared across cores beside the published
//! pages themselves. Slots hold 0 (free) or the txn a snapshot pinned. Only the writer
//! claims slots (in `Db::snapshot`, on the writer's thread), so a slot can never be
//! claimed for an old txn after the writer has computed the minimum; clones of a
//! snapshot share its `Pin` (an `Arc`), and the last one dropped, on any core, frees
//! the slot with a release store that orders the reader's page reads before the
//! writer's reuse (which loads with acquire).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Distinct published txns that may be pinned at once.
pub const EPOCH_SLOTS_MAX: usize = 4096;

pub struct EpochTable {
    slots: Box<[AtomicU64]>,
}

impl EpochTable {
    pub fn new() -> Arc<EpochTable> {
        Arc::new(EpochTable {
            slots: (0..EPOCH_SLOTS_MAX).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Pins `txn` (≥ 1). Called only by the writer.
    pub fn pin(self: &Arc<Self>, txn: u64) -> Pin {
        assert!(txn >= 1);
        for (i, s) in self.slots.iter().enumerate() {
            if s.load(Ordering::Relaxed) == 0
                && s.compare_exchange(0, txn, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                return Pin {
                    table: self.clone(),
                    slot: i,
                };
            }
        }
        panic!("more than {EPOCH_SLOTS_MAX} distinct read snapshots alive (leaked snapshots?)");
    }

    /// The oldest pinned txn, if any.
    pub fn min_pinned(&self) -> Option<u64> {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .filter(|&t| t != 0)
            .min()
    }
}

pub struct Pin {
    table: Arc<EpochTable>,
    slot: usize,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.table.slots[self.slot].store(0, Ordering::Release);
    }
}
