//! Defragmentation's tree work: moving the pages of one leaf's path (and the leaf's
//! overflow runs) that sit at or past a target page id into free pages below it,
//! copy-on-write. The plan (targets, passes, the file cut) is `Db`'s, in `../defrag.rs`.

use super::*;

/// What [`Writer::defrag_leaf`] did with one leaf.
#[derive(Debug, PartialEq, Eq)]
pub enum LeafMove {
    /// The leaf's path and runs are below the target now (`moved_pages` of them were
    /// moved there, `copied_pages` path pages below it copied on the way). `runs_left`
    /// overflow runs found no contiguous free run below the target and stayed. `last`:
    /// it was the tree's last leaf (or the tree is empty); else `next` holds the lower
    /// bound of the next leaf.
    Done {
        moved_pages: u64,
        copied_pages: u64,
        runs_left: u64,
        last: bool,
    },
    /// Too few free pages below the target now; nothing changed.
    NoRoom,
}

impl Writer {
    /// Sorts `free_now` descending (lowest id popped first), if it is not already.
    pub fn sort_free(&mut self) {
        if !self.free_now.is_sorted_by(|a, b| a >= b) {
            self.free_now.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    /// Free pages below `limit` (`free_now` sorted descending).
    pub fn free_below(&self, limit: u64) -> u64 {
        let at_or_past = self.free_now.partition_point(|&id| id >= limit);
        (self.free_now.len() - at_or_past) as u64
    }

    /// Drops the free pages at the top of the file from `free_now` and lowers the
    /// high-water mark past them (`free_now` sorted descending). Free pages are reusable
    /// now: no published root, live snapshot or on-disk meta reaches them, so nothing
    /// below the new mark is lost. Returns how many pages it dropped.
    pub fn lower_high_water(&mut self) -> u64 {
        let hw = self.high_water;
        let k = self
            .free_now
            .iter()
            .enumerate()
            .take_while(|&(i, &id)| id + 1 + i as u64 == hw)
            .count();
        if k > 0 {
            self.free_now.drain(..k);
            self.high_water -= k as u64;
            self.changed = true;
        }
        k as u64
    }

    /// Whether a page below `target` waits in `pending` or `pending_young` (it comes back
    /// to the free list after commits or once readers let go).
    pub fn pending_below(&self, target: u64) -> bool {
        self.pending
            .iter()
            .chain(&self.pending_young)
            .any(|&(_, id, _)| id < target)
    }

    /// Whether page `id` waits in `pending` or `pending_young`.
    pub fn is_pending(&self, id: u64) -> bool {
        self.pending
            .iter()
            .chain(&self.pending_young)
            .any(|&(_, first, n)| first <= id && id < first + n)
    }

    /// Takes the leaf whose range holds `key` and moves every page of its root-to-leaf
    /// path with an id at or past `target`, and every overflow run of the leaf that ends
    /// past it, into the lowest free pages below `target` (the path above a moved page is
    /// copied too: copy-on-write). Pages are verified before they are copied. Expects
    /// `free_now` sorted descending and `hold_freed` set, so the pages it frees are not
    /// taken again in the same step.
    pub fn defrag_leaf(
        &mut self,
        root: &mut TreeRoot,
        key: &[u8],
        target: u64,
        next: &mut Vec<u8>,
    ) -> Result<LeafMove> {
        let done = |last| LeafMove::Done {
            moved_pages: 0,
            copied_pages: 0,
            runs_left: 0,
            last,
        };
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if root.page == 0 {
            return Ok(done(true));
        }
        let mut path: Path = [(0, 0); HEIGHT_MAX];
        let leaf = self.descend(root, key, &mut path)?;
        let levels = root.height as usize - 1;
        let map = self.map.map().clone();
        // The next leaf's lower bound: the separator right of the deepest branch that has
        // a child after the path's.
        let right = (0..levels)
            .rev()
            .find(|&l| path[l].1 + 1 < page::count(map.page(path[l].0)));
        if let Some(l) = right {
            let (pg, i) = path[l];
            next.clear();
            next.extend_from_slice(page::branch_key(map.page(pg), i + 1));
        }
        let last = right.is_none();
        let mut ids = [0u64; HEIGHT_MAX];
        for (l, id) in ids.iter_mut().enumerate().take(levels) {
            *id = path[l].0;
        }
        ids[levels] = leaf;
        // Runs to move are verified before anything changes. A run that has nowhere
        // lower to go does not make the path copied.
        let mut runs = false;
        let mut runs_left = 0;
        {
            let r = self.reader();
            let lp = map.page(leaf);
            for i in 0..page::count(lp) {
                if let (_, ValRef::Overflow { page: o, len }) = page::leaf_cell(lp, i) {
                    let n = page::overflow_run_pages(len);
                    if o + n > target {
                        if self.find_free_run(n, o).is_none() {
                            runs_left += 1;
                            continue;
                        }
                        r.overflow(o, len).map_err(|b| self.corrupt(b))?;
                        runs = true;
                    }
                }
            }
        }
        let deepest = if runs {
            Some(levels)
        } else {
            (0..=levels).rev().find(|&l| ids[l] >= target)
        };
        let Some(d) = deepest else {
            return Ok(LeafMove::Done {
                moved_pages: 0,
                copied_pages: 0,
                runs_left,
                last,
            });
        };
        let singles = ids[..=d]
            .iter()
            .filter(|&&id| id >= target || !self.dirty_pages.contains(id))
            .count() as u64;
        if self.free_below(target) < singles {
            return Ok(LeafMove::NoRoom);
        }
        let (mut moved_pages, mut copied_pages) = (0, 0);
        let mut parent = 0;
        for l in 0..=d {
            let id = ids[l];
            let new = if id >= target {
                moved_pages += 1;
                self.copy_to_new(id)?
            } else if !self.dirty_pages.contains(id) {
                copied_pages += 1;
                self.make_writable(id)?
            } else {
                id
            };
            assert!(
                new < target,
                "defrag moved page {id} to {new}, not below {target}"
            );
            if l == 0 {
                root.page = new;
            } else if new != id {
                page::set_branch_child(self.map.page_mut(parent), path[l - 1].1, new);
            }
            parent = new;
        }
        if runs {
            let leaf = parent;
            for i in 0..page::count(map.page(leaf)) {
                let (o, len) = match page::leaf_cell(map.page(leaf), i).1 {
                    ValRef::Overflow { page: o, len } => (o, len),
                    ValRef::Inline(_) => continue,
                };
                let n = page::overflow_run_pages(len);
                if o + n <= target {
                    continue;
                }
                // The lowest contiguous free pages that start below the run.
                let Some(at) = self.find_free_run(n, o) else {
                    runs_left += 1;
                    continue;
                };
                let new = self.free_now[at + n as usize - 1];
                self.free_now.drain(at..at + n as usize);
                for j in 0..n {
                    self.map.copy_page(o + j, new + j);
                }
                page::set_txn(self.map.page_mut(new), new, self.txn);
                self.dirty.push(new);
                self.dirty_pages.insert(new);
                self.changed = true;
                page::set_leaf_overflow_page(self.map.page_mut(leaf), i, new);
                self.free(o, n);
                moved_pages += n;
            }
        }
        Ok(LeafMove::Done {
            moved_pages,
            copied_pages,
            runs_left,
            last,
        })
    }

    /// The lowest `n` contiguous pages of `free_now` (sorted descending) that start
    /// below `start_limit`: the index of the run's highest page (the run is
    /// `free_now[at..at + n]`). A linear scan from the lowest id up.
    pub fn find_free_run(&self, n: u64, start_limit: u64) -> Option<usize> {
        let f = &self.free_now;
        let mut run = 0u64;
        for i in (0..f.len()).rev() {
            if f[i] + 1 >= start_limit + n {
                return None; // every run ending here or later starts at or past the limit
            }
            run = if i + 1 < f.len() && f[i] == f[i + 1] + 1 {
                run + 1
            } else {
                1
            };
            if run == n {
                return Some(i);
            }
        }
        None
    }

    /// Copies page `id` (verified by the caller, dirty or published) to a new page and
    /// frees it; returns the new id.
    fn copy_to_new(&mut self, id: u64) -> Result<u64> {
        let new = self.alloc(1)?;
        self.map.copy_page(id, new);
        page::set_txn(self.map.page_mut(new), new, self.txn);
        self.free(id, 1);
        Ok(new)
    }
}
