//! Defragmentation in place, in slices (etcd's `Defragment` without its write stall).
//! The design, guarantees and cost are in the module doc of `mod.rs` ("Defragmentation").

use super::btree::LeafMove;
use super::page::HEIGHT_MAX;
use super::{Db, Error, Result, TreeId, PAGE_BYTES, TREE_COUNT};

/// Where a defragmentation stands after a [`Db::defrag_step`] (or what
/// [`Db::defrag_all`] did in total).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefragProgress {
    /// Finished: a whole pass over every tree found no page at or past the target left
    /// to move, the high-water mark is down to the highest live page, and the file has
    /// been cut to it plus the usual headroom. The next `defrag_step` starts a new
    /// defragmentation.
    pub done: bool,
    /// Pages moved from at or past the target to below it (overflow runs count whole).
    pub moved_pages: u64,
    /// Pages below the target copied on the way (the parents of moved pages:
    /// copy-on-write). Their old copies are reused after two commits.
    pub copied_pages: u64,
    /// The file's length on disk now ([`Db::file_bytes`]).
    pub file_bytes: u64,
    /// What the live data needs (pages reachable from the working roots, the two meta
    /// pages, a little slack) when this pass began: pages are moved below this. The file
    /// ends at the high-water mark plus half a grow step of headroom.
    pub target_bytes: u64,
}

/// The state of a defragmentation between steps: one pass walks every tree's leaves in
/// key order from a cursor; passes repeat until one finds nothing to move.
pub(super) struct DefragState {
    /// Pages at or past this id are moved below it; fixed for a pass.
    target_pages: u64,
    /// Cursor: the tree, and the lower bound of the next leaf to visit in it.
    tree: usize,
    key: Vec<u8>,
    /// Pages moved and leaves that found no room, in this pass.
    pass_moved_pages: u64,
    pass_blocked: u64,
    /// A pass found nothing to move: only lowering the high-water mark and the cut remain.
    relocated: bool,
}

/// Leaves a step visits at most, per page of budget (plus `LEAVES_PER_STEP_MIN`): bounds
/// the time of a step that finds little to move (each visit verifies the leaf's path).
const LEAVES_PER_BUDGET_PAGE: u64 = 8;
const LEAVES_PER_STEP_MIN: u64 = 64;
/// Pages [`Db::defrag_all`] moves per step.
const DEFRAG_ALL_STEP_PAGES: u64 = 4096;
/// Rounds without any progress after which [`Db::defrag_all`] gives up (a live
/// `ReadSnapshot` holds the pages it waits for).
const DEFRAG_ALL_STALLED_ROUNDS_MAX: u32 = 8;

impl Db {
    /// A new pass over every tree, with the target computed from the live data now.
    fn defrag_pass(&self) -> DefragState {
        let live = self.stats().pages_in_use;
        // Slack: a move needs up to one free page per level below the target at once
        // (the path is copied: the tallest tree's height, plus one), and overflow runs
        // need contiguous free pages. (A fixed HEIGHT_MAX made a small db's defrag a no-op:
        // etcd's e2e TestCtlV3Alarm defragments a 15-page db to fit a 13-page quota.)
        let height = self
            .roots
            .iter()
            .map(|r| r.height as u64)
            .max()
            .unwrap_or(0);
        let target_pages = 2 + live + (height + 1).min(HEIGHT_MAX as u64) + live / 64;
        DefragState {
            target_pages,
            tree: 0,
            key: Vec::new(),
            pass_moved_pages: 0,
            pass_blocked: 0,
            relocated: self.w.high_water <= target_pages,
        }
    }

    /// One slice of defragmentation: moves up to `budget_pages` live pages at or past the
    /// target into the lowest free pages below it (copy-on-write, in the working txn
    /// like `insert`: the caller publishes and commits as usual), and lowers the
    /// high-water mark past free pages at the top of the file. The file itself is cut in
    /// [`Db::commit`], once no on-disk meta, live snapshot or reader can reach the cut
    /// pages. Until it returns `done`, each call marks the working state changed, so the
    /// caller's next commit advances the txn the reuse of moved-away pages waits for.
    ///
    /// Errors: `Poisoned` after an earlier failure; `Corrupt` if a page it must move or
    /// pass through fails its check (the Db is then poisoned, like a failed `remove`).
    pub fn defrag_step(&mut self, budget_pages: u64) -> Result<DefragProgress> {
        self.defrag_step_counted(budget_pages).map(|(p, _)| p)
    }

    /// [`Db::defrag_step`], also returning the number of leaves it visited.
    fn defrag_step_counted(&mut self, budget_pages: u64) -> Result<(DefragProgress, u64)> {
        if self.w.poisoned {
            return Err(Error::Poisoned);
        }
        let mut st = match self.defrag.take() {
            Some(st) => st,
            None => self.defrag_pass(),
        };
        self.w.reclaim();
        self.w.sort_free();
        let mut progress = DefragProgress {
            target_bytes: st.target_pages * PAGE_BYTES as u64,
            ..DefragProgress::default()
        };
        let mut visited = 0;
        if !st.relocated {
            self.w.hold_freed = true;
            let r = self.defrag_relocate(&mut st, budget_pages.max(1), &mut progress);
            self.w.hold_freed = false;
            let held = std::mem::take(&mut self.w.held);
            self.w.free_now.extend(held);
            self.w.sort_free();
            match r {
                Ok(v) => visited = v,
                Err(e) => {
                    // The tree may be half moved: like a failed `remove`, the working
                    // state can no longer be published.
                    self.w.poisoned = true;
                    return Err(e);
                }
            }
        }
        self.w.lower_high_water();
        let hw = self.w.high_water;
        let top_live = hw == 2 || !self.w.is_pending(hw - 1);
        // Cut as tight as `shrink` cuts while a defragmentation runs (half a step of
        // headroom), not within its usual whole step: a user defragments to get the space
        // back (etcd's e2e TestCtlV3Alarm: a 13-page file, 5 pages live, 13-page quota).
        let cut =
            self.w.file_len_bytes <= (hw + self.w.step_pages(hw).div_ceil(2)) * PAGE_BYTES as u64;
        progress.done = st.relocated && top_live && cut;
        progress.file_bytes = self.w.file_len_bytes;
        if !progress.done {
            self.w.changed = true;
            self.defrag = Some(st);
        }
        self.w.free_sorted = !progress.done;
        self.invariants();
        Ok((progress, visited))
    }

    /// The relocation walk of one step; returns the leaves visited.
    fn defrag_relocate(
        &mut self,
        st: &mut DefragState,
        budget_pages: u64,
        progress: &mut DefragProgress,
    ) -> Result<u64> {
        let visits_max = budget_pages * LEAVES_PER_BUDGET_PAGE + LEAVES_PER_STEP_MIN;
        let mut visited = 0;
        let mut next = Vec::new();
        while progress.moved_pages < budget_pages && visited < visits_max {
            if st.tree == TREE_COUNT {
                if st.pass_moved_pages == 0 && st.pass_blocked == 0 {
                    st.relocated = true;
                } else {
                    // Another pass, against the live size now; it starts next step, after
                    // the pages held back this step are merged into the free list.
                    *st = self.defrag_pass();
                }
                break;
            }
            let target = st.target_pages;
            let root = &mut self.roots[TreeId::ALL[st.tree] as usize];
            match self.w.defrag_leaf(root, &st.key, target, &mut next)? {
                LeafMove::NoRoom => {
                    st.pass_blocked += 1;
                    // Free pages below the target come back from `pending` after
                    // commits; if none will, the live data outgrew the target: re-plan.
                    if !self.w.pending_below(target) {
                        st.tree = TREE_COUNT;
                    }
                    break;
                }
                LeafMove::Done {
                    moved_pages,
                    copied_pages,
                    runs_left,
                    last,
                } => {
                    visited += 1;
                    progress.moved_pages += moved_pages;
                    progress.copied_pages += copied_pages;
                    st.pass_moved_pages += moved_pages;
                    // An overflow run with no contiguous free pages below the target yet
                    // stays where it is; if pending pages below it will come back, the
                    // pass is not clean (another pass tries again). (Counting such runs
                    // as done left a 2-page run at the top of a 13-page file: etcd's e2e
                    // TestCtlV3Alarm.)
                    if runs_left > 0 && self.w.pending_below(target) {
                        st.pass_blocked += 1;
                    }
                    if last {
                        st.tree += 1;
                        st.key.clear();
                    } else {
                        std::mem::swap(&mut st.key, &mut next);
                    }
                }
            }
        }
        Ok(visited)
    }

    /// Defragments completely: `defrag_step` and `commit` in a loop until done (for the
    /// offline `keel defrag` and tests). Returns the totals, `done: false` if it stopped
    /// making progress (a live `ReadSnapshot` holds pages it waits for).
    pub async fn defrag_all(&mut self) -> Result<DefragProgress> {
        let mut total = DefragProgress::default();
        let mut stalled = 0;
        // Bounded: every round that is not stalled moves pages, visits leaves, lowers the
        // high-water mark or cuts the file, and passes end once one finds nothing.
        let rounds_max = 1024 + 64 * (self.w.file_pages() / DEFRAG_ALL_STEP_PAGES);
        for _ in 0..rounds_max {
            let (hw, len) = (self.w.high_water, self.w.file_len_bytes);
            let (p, visited) = self.defrag_step_counted(DEFRAG_ALL_STEP_PAGES)?;
            total.moved_pages += p.moved_pages;
            total.copied_pages += p.copied_pages;
            total.target_bytes = p.target_bytes;
            self.commit().await?;
            total.file_bytes = self.w.file_len_bytes;
            if p.done {
                total.done = true;
                return Ok(total);
            }
            let moving = p.moved_pages > 0 || visited > 0;
            if moving || hw != self.w.high_water || len != self.w.file_len_bytes {
                stalled = 0;
            } else {
                stalled += 1;
                if stalled >= DEFRAG_ALL_STALLED_ROUNDS_MAX {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Lowers the usable file length past pages nothing can reach, and cuts the file
    /// once no reader can hold the old length (called by `commit` after the meta sync).
    ///
    /// The new end is past the highest high-water mark of the working state, the
    /// published state and both on-disk metas (so either meta still opens), plus half a
    /// grow step; it is lowered only when the file is more than a whole step longer than
    /// that (no shrink-grow flapping), or, while a defragmentation runs, more than half a
    /// step. No live snapshot reaches a page past the working
    /// high-water mark (pages drop off the mark only from `free_now`). The `ftruncate`
    /// waits until every snapshot that existed when the length was lowered is dropped:
    /// one of them might be inside a read that checked a damaged page id against the
    /// old length.
    pub(super) async fn shrink(&mut self) -> Result<()> {
        let end = self
            .w
            .high_water
            .max(self.published.high_water)
            .max(self.durable_high_water)
            .max(self.durable_prev_high_water);
        let step = self.w.step_pages(end);
        // Outside a defragmentation, only a file more than a whole step too long is cut
        // (no shrink-grow flapping); during one, anything past the half step it keeps.
        let slack = if self.defrag.is_some() {
            step.div_ceil(2)
        } else {
            step
        };
        if self.w.file_pages() > end + slack {
            let bytes = (end + step.div_ceil(2)) * PAGE_BYTES as u64;
            self.w.map.shrink_file_bytes(bytes);
            self.shrink_cut_after = Some(self.published.txn);
        }
        let Some(txn) = self.shrink_cut_after else {
            return Ok(());
        };
        if self.epochs.min_pinned().is_some_and(|t| t <= txn) {
            return Ok(());
        }
        self.shrink_cut_after = None;
        let bytes = self.w.map.map().file_bytes();
        if bytes >= self.w.file_len_bytes {
            return Ok(());
        }
        if let Err(e) = self.file.truncate(bytes).await {
            self.w.poisoned = true;
            return Err(super::gio_err(&self.w.path, "ftruncate (shrink)")(e));
        }
        self.w.file_len_bytes = bytes;
        Ok(())
    }
}
