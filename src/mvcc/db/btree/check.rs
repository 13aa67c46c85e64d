//! The tree walk at open and in `Db::check`: every reachable page claimed once, its header,
//! cells, order, bounds and counts checked, naming the page on failure.

use super::*;

/// What a tree walk found: for `check` and open.
pub struct WalkLimits<'s> {
    pub high_water: u64,
    pub txn_max: u64,
    /// Checksums are verified for pages with txn below this (dirty pages are unsealed).
    pub crc_below_txn: u64,
    pub seen: &'s mut [u64],
}

/// Checks the tree under `root` (see `Db::check`); errors name the page offset.
pub fn check_tree(map: &Map, root: &TreeRoot, lim: &mut WalkLimits) -> CheckResult<()> {
    if root.page == 0 {
        if root.height != 0 || root.entries != 0 || root.payload_bytes != 0 {
            return Err((0, "empty tree with non-zero height or counts".into()));
        }
        return Ok(());
    }
    if root.height == 0 || root.height as usize >= HEIGHT_MAX {
        return Err((0, format!("tree height {}", root.height)));
    }
    let (entries, payload) =
        check_node(map, root.page, root.height as usize - 1, None, None, lim, 0)?;
    if entries != root.entries || payload != root.payload_bytes {
        return Err((
            root.page * PAGE_BYTES as u64,
            format!(
                "tree holds {entries} entries / {payload} bytes, meta says {} / {}",
                root.entries, root.payload_bytes
            ),
        ));
    }
    Ok(())
}

pub(super) fn claim(lim: &mut WalkLimits, id: u64, n: u64, from: u64) -> CheckResult<()> {
    if id < 2 || id.checked_add(n).is_none_or(|e| e > lim.high_water) {
        return Err((
            from,
            format!("page id {id} (+{n}) outside 2..{}", lim.high_water),
        ));
    }
    for p in id..id + n {
        let (w, b) = ((p / 64) as usize, p % 64);
        if lim.seen[w] & (1 << b) != 0 {
            return Err((p * PAGE_BYTES as u64, format!("page {p} reachable twice")));
        }
        lim.seen[w] |= 1 << b;
    }
    Ok(())
}

pub(super) fn check_header(
    p: &[u8],
    id: u64,
    kind: u8,
    lim: &WalkLimits,
) -> std::result::Result<(), String> {
    if page::kind(p) != kind {
        return Err(format!("page kind {} where {kind} expected", page::kind(p)));
    }
    if page::page_id(p) != id {
        return Err(format!(
            "page claims id {} (misdirected write?)",
            page::page_id(p)
        ));
    }
    if page::txn(p) > lim.txn_max {
        return Err(format!(
            "page txn {} newer than meta txn {}",
            page::txn(p),
            lim.txn_max
        ));
    }
    Ok(())
}

pub(super) fn check_node(
    map: &Map,
    id: u64,
    level: usize,
    lo: Option<&[u8]>,
    hi: Option<&[u8]>,
    lim: &mut WalkLimits,
    from: u64,
) -> CheckResult<(u64, u64)> {
    claim(lim, id, 1, from)?;
    let off = id * PAGE_BYTES as u64;
    let p = map.page(id);
    let kind = if level == 0 { KIND_LEAF } else { KIND_BRANCH };
    let bad = |what: String| (off, what);
    check_header(p, id, kind, lim).map_err(bad)?;
    if page::txn(p) < lim.crc_below_txn && !page::crc_ok(p) {
        return Err(bad("checksum mismatch".into()));
    }
    if page::level(p) != level {
        return Err(bad(format!(
            "level {} where {level} expected",
            page::level(p)
        )));
    }
    let n = page::count(p);
    if n == 0 {
        return Err(bad("empty page".into()));
    }
    let mut idx = 0usize;
    page::check_cells(p, |k| {
        let bounded = kind == KIND_BRANCH && idx == 0;
        idx += 1;
        if bounded {
            return Ok(());
        }
        if lo.is_some_and(|lo| k < lo) || hi.is_some_and(|hi| k >= hi) {
            return Err(format!(
                "key at cell {} outside its parent's range",
                idx - 1
            ));
        }
        Ok(())
    })
    .map_err(bad)?;
    let (mut entries, mut payload) = (0u64, 0u64);
    if level == 0 {
        for i in 0..n {
            let (k, v) = page::leaf_cell(p, i);
            entries += 1;
            payload += (k.len() + value_len(v)) as u64;
            if let ValRef::Overflow { page: o, len } = v {
                check_overflow(map, o, len, lim, off)?;
            }
        }
        return Ok((entries, payload));
    }
    for i in 0..n {
        let clo = if i == 0 {
            lo
        } else {
            Some(page::branch_key(p, i))
        };
        let chi = if i + 1 < n {
            Some(page::branch_key(p, i + 1))
        } else {
            hi
        };
        let (e, b) = check_node(map, page::branch_child(p, i), level - 1, clo, chi, lim, off)?;
        entries += e;
        payload += b;
    }
    Ok((entries, payload))
}

pub(super) fn check_overflow(
    map: &Map,
    o: u64,
    len: usize,
    lim: &mut WalkLimits,
    from: u64,
) -> CheckResult<()> {
    let n = page::overflow_run_pages(len);
    claim(lim, o, n, from)?;
    let off = o * PAGE_BYTES as u64;
    let first = map.page(o);
    check_header(first, o, page::KIND_OVERFLOW, lim).map_err(|w| (off, w))?;
    if page::overflow_len(first) != len || page::overflow_pages(first) != n {
        return Err((
            off,
            format!("overflow run header does not match value of {len} bytes"),
        ));
    }
    if page::txn(first) < lim.crc_below_txn
        && !page::crc_ok(map.bytes(off, n as usize * PAGE_BYTES))
    {
        return Err((off, "overflow run checksum mismatch".into()));
    }
    Ok(())
}
