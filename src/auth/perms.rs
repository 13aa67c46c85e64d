//! A user's key permissions as etcd checks them: the union of its roles' grants, one
//! interval set for READ and one for WRITE, rebuilt on every auth change.
//!
//! etcd's rules (`auth/range_perm_cache.go`):
//! - a grant is `[key, range_end)`; an empty `range_end` grants the one key; `range_end`
//!   `"\0"` grants every key from `key` on; a grant with an empty key, or an empty range
//!   (`range_end <= key`), is refused when it is made ([`check_grant`]);
//! - a request on one key is allowed when some grant holds the key;
//! - a request on a range is allowed only when the grants together cover the whole range
//!   (a from-key range, `range_end` `"\0"`, is a range to the end of the key space:
//!   GHSA-xg4h-6gfc-h4m8 was etcd checking it as the single key `key`).
//!
//! Intervals are kept sorted and merged, so a check is one binary search.

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermType {
    Read,
    Write,
    ReadWrite,
}

/// One grant of a role, as etcd stores it (`authpb.Permission`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub perm: PermType,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

/// Why a grant is refused (the Auth service maps each to etcd's error when it is built).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The grant's key is empty.
    EmptyKey,
    /// The grant's range is empty (`range_end <= key`, and not `"\0"`).
    EmptyRange,
}

/// Checks a grant as etcd does before storing it.
pub fn check_grant(key: &[u8], range_end: &[u8]) -> Result<(), GrantError> {
    if key.is_empty() {
        return Err(GrantError::EmptyKey);
    }
    if !range_end.is_empty() && range_end != b"\0" && range_end <= key {
        return Err(GrantError::EmptyRange);
    }
    Ok(())
}

/// `[start, end)`; `end` `None` is the end of the key space.
type Interval = (Vec<u8>, Option<Vec<u8>>);

/// The interval a request or grant names.
fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    match range_end {
        b"" => {
            // One key: [key, key + "\0"), the next key in byte order.
            let mut next = key.to_vec();
            next.push(0);
            (key.to_vec(), Some(next))
        }
        b"\0" => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

/// A union of key intervals, sorted by start, none overlapping or touching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    intervals: Vec<Interval>,
}

impl KeySet {
    /// The union of `grants` (each `(key, range_end)`).
    pub fn from_grants<'a>(grants: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> KeySet {
        let mut all: Vec<Interval> = grants
            .into_iter()
            .filter(|(k, e)| check_grant(k, e).is_ok())
            .map(|(k, e)| interval(k, e))
            .collect();
        all.sort();
        let mut merged: Vec<Interval> = Vec::with_capacity(all.len());
        for (start, end) in all {
            if let Some((_, last_end)) = merged.last_mut() {
                let reaches = match last_end {
                    None => true,
                    Some(e) => start <= *e,
                };
                if reaches {
                    let longer = match (&*last_end, &end) {
                        (None, _) | (_, None) => None,
                        (Some(a), Some(b)) => Some(a.max(b).clone()),
                    };
                    *last_end = longer;
                    continue;
                }
            }
            merged.push((start, end));
        }
        KeySet { intervals: merged }
    }

    /// The interval holding `key`, if any.
    fn holding(&self, key: &[u8]) -> Option<&Interval> {
        // The last interval starting at or before `key`.
        let at = self.intervals.partition_point(|(s, _)| s.as_slice() <= key);
        let (start, end) = self.intervals.get(at.checked_sub(1)?)?;
        let inside = start.as_slice() <= key && end.as_deref().is_none_or(|e| key < e);
        inside.then(|| &self.intervals[at - 1])
    }

    /// Whether a request on `key` (with `range_end`, etcd's encoding) is allowed: one
    /// key must be held; a range must be covered whole.
    pub fn allows(&self, key: &[u8], range_end: &[u8]) -> bool {
        if range_end.is_empty() {
            return self.holding(key).is_some();
        }
        let (start, end) = interval(key, range_end);
        if let Some(e) = &end {
            if *e <= start {
                // An empty range reads nothing; Keel still asks for the key itself.
                return self.holding(key).is_some();
            }
        }
        let Some((_, held_end)) = self.holding(&start) else {
            return false;
        };
        match (held_end, end) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(h), Some(e)) => e <= *h,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }
}

/// A user's permissions: the union of its roles' grants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserPerms {
    pub read: KeySet,
    pub write: KeySet,
}

impl UserPerms {
    pub fn from_grants<'a>(grants: impl IntoIterator<Item = &'a Grant> + Clone) -> UserPerms {
        let of = |want: PermType| {
            KeySet::from_grants(
                grants
                    .clone()
                    .into_iter()
                    .filter(move |g| g.perm == want || g.perm == PermType::ReadWrite)
                    .map(|g| (g.key.as_slice(), g.range_end.as_slice())),
            )
        };
        UserPerms {
            read: of(PermType::Read),
            write: of(PermType::Write),
        }
    }

    pub fn can_read(&self, key: &[u8], range_end: &[u8]) -> bool {
        self.read.allows(key, range_end)
    }

    pub fn can_write(&self, key: &[u8], range_end: &[u8]) -> bool {
        self.write.allows(key, range_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    fn set(grants: &[(&str, &str)]) -> KeySet {
        KeySet::from_grants(grants.iter().map(|(k, e)| (k.as_bytes(), e.as_bytes())))
    }

    #[test]
    fn keys_ranges_and_from_key() {
        let s = set(&[("a", ""), ("c", "e"), ("x", "\0")]);
        assert!(s.allows(b"a", b""));
        assert!(!s.allows(b"a\0", b""));
        assert!(!s.allows(b"b", b""));
        assert!(s.allows(b"c", b"e"));
        assert!(s.allows(b"d", b"dz"));
        assert!(!s.allows(b"c", b"f"), "a range must be covered whole");
        assert!(!s.allows(b"b", b"d"));
        assert!(s.allows(b"x", b"\0"));
        assert!(s.allows(b"y", b"\0"));
        assert!(s.allows(b"zzz", b""));
        // GHSA-xg4h-6gfc-h4m8: a from-key range is a range, not the key `c`.
        assert!(s.allows(b"c", b""));
        assert!(!s.allows(b"c", b"\0"));
        // A grant of one key does not cover a range starting there.
        assert!(!s.allows(b"a", b"b"));
        assert!(s.allows(b"a", b"a\0"));
    }

    #[test]
    fn touching_grants_join() {
        let s = set(&[("a", "b"), ("b", "c"), ("c", "")]);
        assert!(s.allows(b"a", b"c\0"));
        assert!(!s.allows(b"a", b"c\0\0"));
        assert_eq!(s.intervals.len(), 1);
    }

    #[test]
    fn bad_grants_are_refused_and_never_count() {
        assert_eq!(check_grant(b"", b""), Err(GrantError::EmptyKey));
        assert_eq!(check_grant(b"", b"\0"), Err(GrantError::EmptyKey));
        assert_eq!(check_grant(b"b", b"a"), Err(GrantError::EmptyRange));
        assert_eq!(check_grant(b"b", b"b"), Err(GrantError::EmptyRange));
        assert_eq!(check_grant(b"b", b"\0"), Ok(()));
        assert!(set(&[("", "\0"), ("b", "a")]).is_empty());
    }

    #[test]
    fn readwrite_counts_for_both() {
        let grants = [
            Grant {
                perm: PermType::Read,
                key: b"r".to_vec(),
                range_end: b"s".to_vec(),
            },
            Grant {
                perm: PermType::ReadWrite,
                key: b"w".to_vec(),
                range_end: b"\0".to_vec(),
            },
        ];
        let u = UserPerms::from_grants(grants.iter());
        assert!(u.can_read(b"r1", b"") && !u.can_write(b"r1", b""));
        assert!(u.can_read(b"w", b"\0") && u.can_write(b"wz", b""));
        assert!(!u.can_write(b"a", b""));
    }

    /// Against a brute-force model over a small alphabet: a key is allowed when some
    /// grant holds it; a range when every key of the (finite) key space inside it is held.
    #[test]
    fn agrees_with_brute_force() {
        let alphabet = [b'a', b'b', b'c'];
        let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
        for len in 1..=3 {
            let mut next = Vec::new();
            for k in keys.iter().filter(|k| k.len() == len - 1) {
                for c in alphabet.iter().chain(std::iter::once(&0u8)) {
                    let mut k = k.clone();
                    k.push(*c);
                    next.push(k);
                }
            }
            keys.extend(next);
        }
        keys.sort();
        keys.dedup();
        let mut rng = Rng(17);
        let pick =
            |rng: &mut Rng, keys: &[Vec<u8>]| keys[rng.below(keys.len() as u64) as usize].clone();
        let end_of = |rng: &mut Rng, keys: &[Vec<u8>]| match rng.below(4) {
            0 => Vec::new(),
            1 => b"\0".to_vec(),
            _ => pick(rng, keys),
        };
        for _ in 0..400 {
            let n = rng.below(4) as usize;
            let grants: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
                .map(|_| (pick(&mut rng, &keys), end_of(&mut rng, &keys)))
                .collect();
            let s = KeySet::from_grants(grants.iter().map(|(k, e)| (k.as_slice(), e.as_slice())));
            let held = |k: &[u8]| {
                grants
                    .iter()
                    .filter(|(gk, ge)| check_grant(gk, ge).is_ok())
                    .any(|(gk, ge)| {
                        let (st, en) = interval(gk, ge);
                        st.as_slice() <= k && en.as_deref().is_none_or(|e| k < e)
                    })
            };
            for _ in 0..50 {
                let k = pick(&mut rng, &keys);
                let e = end_of(&mut rng, &keys);
                let want = if e.is_empty() {
                    held(&k)
                } else {
                    let (st, en) = interval(&k, &e);
                    if en.as_ref().is_some_and(|en| *en <= st) {
                        held(&k)
                    } else {
                        // Every key of the model's space in the range.
                        let mut inside: Vec<Vec<u8>> = keys
                            .iter()
                            .filter(|x| **x >= st && en.as_ref().is_none_or(|e| *x < e))
                            .cloned()
                            .collect();
                        // Every gap in the grants starts at a grant's end (or before
                        // the range): testing those ends too makes the model exact.
                        inside.push(st.clone());
                        for (gk, ge) in &grants {
                            if let (_, Some(gend)) = interval(gk, ge) {
                                if gend >= st && en.as_ref().is_none_or(|e| gend < *e) {
                                    inside.push(gend);
                                }
                            }
                        }
                        inside.iter().all(|x| held(x))
                    }
                };
                assert_eq!(
                    s.allows(&k, &e),
                    want,
                    "grants {grants:?}, request {k:?}..{e:?}"
                );
            }
        }
    }
}
