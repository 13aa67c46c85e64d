//! Round trips through the writer and the reader, bbolt itself (etcdctl, etcd 3.4) reading
//! our files and writing the files we read, and damaged input.
//!
//! The tests named `etcd_*` run Debian's `/usr/bin/etcdctl` and `/usr/bin/etcd` (packages
//! etcd-client and etcd-server, 3.4): they fail, not skip, when those are missing.

use super::write::{new_page, put_leaf_element, write_meta};
use super::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

type Entries = Vec<(Vec<u8>, Vec<u8>)>;
type Buckets = Vec<(Vec<u8>, Entries)>;

/// splitmix64 (this module is a leaf: no `crate::test_rng`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn borrowed(buckets: &Buckets) -> Vec<(&[u8], Entries)> {
    buckets
        .iter()
        .map(|(n, e)| (n.as_slice(), e.clone()))
        .collect()
}

/// Plan + LeafWriter, draining the output every `chunk_bytes` the way a caller streaming
/// to a file or socket would.
fn write_streaming(buckets: &Buckets, chunk_bytes: usize) -> Result<Vec<u8>, Error> {
    let names: Vec<&[u8]> = buckets.iter().map(|(n, _)| n.as_slice()).collect();
    let mut plan = Plan::new(&names);
    for (i, (_, entries)) in buckets.iter().enumerate() {
        for (k, v) in entries {
            plan.measure(i, k, v);
        }
    }
    let layout = plan.finish();
    let mut file = Vec::new();
    let mut out = Vec::new();
    layout.write_head(&mut out);
    assert_eq!(out.len() as u64, layout.head_bytes());
    let mut leaves = layout.leaves();
    for (i, (_, entries)) in buckets.iter().enumerate() {
        for (k, v) in entries {
            leaves.push(i, k, v, &mut out)?;
            if out.len() >= chunk_bytes {
                file.append(&mut out);
            }
        }
    }
    leaves.finish(&mut out)?;
    file.append(&mut out);
    assert_eq!(file.len() as u64, layout.total_bytes());
    Ok(file)
}

fn read_back(bytes: &[u8]) -> Buckets {
    let r = Reader::open(bytes).unwrap();
    r.bucket_names()
        .unwrap()
        .into_iter()
        .map(|name| {
            let mut entries = Vec::new();
            let found = r
                .for_each(&name, &mut |k, v| {
                    entries.push((k.to_vec(), v.to_vec()));
                    Ok(())
                })
                .unwrap();
            assert!(found);
            (name, entries)
        })
        .collect()
}

/// `status` computed from the buckets themselves (etcd's definition), for comparison.
fn status_of(buckets: &Buckets, total_size: u64) -> Status {
    let mut h = Crc32c::new();
    let mut s = Status {
        hash: 0,
        revision: 0,
        total_key: 0,
        total_size,
    };
    for (name, entries) in buckets {
        h.update(name);
        for (k, v) in entries {
            h.update(k);
            h.update(v);
            s.total_key += 1;
        }
        if name == b"key" {
            if let Some((k, _)) = entries.last() {
                s.revision = i64::from_be_bytes(k[..8].try_into().unwrap());
            }
        }
    }
    s.hash = h.sum();
    s
}

fn random_buckets(rng: &mut Rng, big_values: bool) -> Buckets {
    let mut names: Vec<Vec<u8>> = (0..1 + rng.below(6))
        .map(|_| {
            let len = 1 + rng.below(12) as usize;
            (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
        })
        .collect();
    names.push(b"empty".to_vec());
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            if name == b"empty" {
                return (name, Vec::new());
            }
            let count = match rng.below(4) {
                0 => rng.below(3) as usize,
                1 => rng.below(50) as usize,
                _ => rng.below(3000) as usize,
            };
            let mut entries: Vec<(Vec<u8>, Vec<u8>)> = (0..count)
                .map(|_| {
                    let klen_max = if rng.below(20) == 0 { 600 } else { 24 };
                    let klen = 1 + rng.below(klen_max) as usize;
                    let vlen = match rng.below(20) {
                        0 => 0,
                        1 => 1,
                        2 if big_values => 1 + rng.below(200 * 1024) as usize,
                        3 => 3000 + rng.below(3000) as usize,
                        _ => rng.below(100) as usize,
                    };
                    (rng.bytes(klen), rng.bytes(vlen))
                })
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.dedup_by(|a, b| a.0 == b.0);
            (name, entries)
        })
        .collect()
}

#[test]
fn checksums_match_their_reference_values() {
    let mut c = Crc32c::new();
    c.update(b"123456789");
    assert_eq!(c.sum(), 0xE306_9283);
    // Split updates and the slicing-by-8 path agree with one byte at a time.
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut whole = Crc32c::new();
    whole.update(&data);
    let mut parts = Crc32c::new();
    for piece in data.chunks(3) {
        parts.update(piece);
    }
    assert_eq!(whole.sum(), parts.sum());
    assert_eq!(Crc32c::new().sum(), 0);
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
}

#[test]
fn random_buckets_round_trip() {
    for seed in 0..12 {
        let mut rng = Rng(seed);
        let buckets = random_buckets(&mut rng, seed % 3 == 0);
        let whole = write_all(&borrowed(&buckets));
        assert_eq!(whole.len() % PAGE_BYTES, 0);
        let chunk_bytes = 1 + rng.below(64 * 1024) as usize;
        let streamed = write_streaming(&buckets, chunk_bytes).unwrap();
        assert!(whole == streamed, "seed {seed}: streamed file differs");
        assert_eq!(read_back(&whole), buckets, "seed {seed}");
        let s = status(&whole).unwrap();
        assert_eq!(s, status_of(&buckets, whole.len() as u64), "seed {seed}");
        for (name, _) in &buckets {
            let mut n = 0;
            let r = Reader::open(&whole).unwrap();
            assert!(r
                .for_each(name, &mut |_, _| {
                    n += 1;
                    Ok(())
                })
                .unwrap());
        }
        let r = Reader::open(&whole).unwrap();
        assert!(!r.for_each(b"absent", &mut |_, _| Ok(())).unwrap());
    }
}

#[test]
fn overflow_values_and_empty_buckets_round_trip() {
    let mut rng = Rng(99);
    let mut big = Vec::new();
    for (i, len) in [0usize, 1, 4079, 4080, 4096, 5000, 65536, 200 * 1024]
        .into_iter()
        .enumerate()
    {
        big.push((vec![b'k', i as u8], rng.bytes(len)));
    }
    let buckets: Buckets = vec![
        (b"a".to_vec(), Vec::new()),
        (b"big".to_vec(), big),
        (b"m".to_vec(), Vec::new()),
        (b"z".to_vec(), vec![(b"only".to_vec(), Vec::new())]),
    ];
    let file = write_all(&borrowed(&buckets));
    assert_eq!(read_back(&file), buckets);
    assert_eq!(file, write_streaming(&buckets, 1).unwrap());
    // No buckets at all is a valid file too.
    let none = write_all(&[]);
    assert!(read_back(&none).is_empty());
}

#[test]
fn a_hundred_thousand_keys_need_two_branch_levels() {
    let mut rng = Rng(7);
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..100_000u64)
        .map(|i| {
            let mut k = i.to_be_bytes().to_vec();
            k.push(b'_');
            k.extend_from_slice(&0u64.to_be_bytes());
            let vlen = rng.below(40) as usize;
            (k, rng.bytes(vlen))
        })
        .collect();
    let buckets: Buckets = vec![
        (b"key".to_vec(), entries),
        (b"meta".to_vec(), vec![(b"x".to_vec(), b"y".to_vec())]),
    ];
    let names: Vec<&[u8]> = vec![b"key", b"meta"];
    let mut plan = Plan::new(&names);
    for (i, (_, e)) in buckets.iter().enumerate() {
        for (k, v) in e {
            plan.measure(i, k, v);
        }
    }
    let layout = plan.finish();
    assert!(
        layout.branch_depth(0) >= 2,
        "depth {}",
        layout.branch_depth(0)
    );
    assert_eq!(layout.branch_depth(1), 0);
    let file = write_streaming(&buckets, 1 << 20).unwrap();
    assert_eq!(file, write_all(&borrowed(&buckets)));
    assert_eq!(read_back(&file), buckets);
    let s = status(&file).unwrap();
    assert_eq!(s.revision, 99_999);
    assert_eq!(s.total_key, 100_001);
}

/// Pass 2 feeding other entries than pass 1 is an error, never a file.
#[test]
fn pass_two_must_match_pass_one() {
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..2000u32)
        .map(|i| {
            (
                format!("k{i:06}").into_bytes(),
                vec![b'v'; (i % 50) as usize],
            )
        })
        .collect();
    let names: Vec<&[u8]> = vec![b"a", b"b", b"c"];
    let feed = |plan_entries: &[(usize, Vec<u8>, Vec<u8>)],
                pass2: &[(usize, Vec<u8>, Vec<u8>)]|
     -> Result<Vec<u8>, Error> {
        let mut plan = Plan::new(&names);
        for (b, k, v) in plan_entries {
            plan.measure(*b, k, v);
        }
        let layout = plan.finish();
        let mut out = Vec::new();
        layout.write_head(&mut out);
        let mut w = layout.leaves();
        for (b, k, v) in pass2 {
            w.push(*b, k, v, &mut out)?;
        }
        w.finish(&mut out)?;
        assert_eq!(out.len() as u64, layout.total_bytes());
        Ok(out)
    };
    let base: Vec<(usize, Vec<u8>, Vec<u8>)> = entries
        .iter()
        .map(|(k, v)| (0, k.clone(), v.clone()))
        .chain(
            entries
                .iter()
                .take(10)
                .map(|(k, v)| (2, k.clone(), v.clone())),
        )
        .collect();
    let ok = feed(&base, &base).unwrap();
    assert_eq!(read_back(&ok)[0].1.len(), 2000);

    let mut fewer = base.clone();
    fewer.remove(1000);
    assert!(matches!(feed(&base, &fewer), Err(Error::Mismatch(_))));
    let mut last_missing = base.clone();
    last_missing.pop();
    assert!(matches!(
        feed(&base, &last_missing),
        Err(Error::Mismatch(_))
    ));
    let mut more = base.clone();
    more.push((2, b"zzz".to_vec(), Vec::new()));
    assert!(matches!(feed(&base, &more), Err(Error::Mismatch(_))));
    let mut in_empty = base.clone();
    in_empty.insert(2000, (1, b"x".to_vec(), Vec::new()));
    assert!(matches!(feed(&base, &in_empty), Err(Error::Mismatch(_))));
    let mut longer = base.clone();
    longer[5].2.push(b'!');
    assert!(matches!(feed(&base, &longer), Err(Error::Mismatch(_))));
    let mut shorter = base.clone();
    shorter[7].2 = Vec::new();
    assert!(matches!(feed(&base, &shorter), Err(Error::Mismatch(_))));
    // Same sizes, other bytes: a valid file with the new values.
    let mut other_values = base.clone();
    for e in &mut other_values {
        e.2.fill(b'w');
    }
    let file = feed(&base, &other_values).unwrap();
    assert!(read_back(&file)[0]
        .1
        .iter()
        .all(|(_, v)| v.iter().all(|&b| b == b'w')));
    // A key replaced by another of the same size that starts a leaf.
    let mut shifted = base.clone();
    shifted[0].1 = b"k!00000".to_vec();
    assert!(feed(&base, &shifted).is_err());

    // Entries bbolt cannot hold, or out of order: reported by pass 2.
    let mut unsorted = base.clone();
    unsorted.swap(3, 4);
    assert!(matches!(feed(&unsorted, &unsorted), Err(Error::Invalid(_))));
    assert!(matches!(feed(&base, &unsorted), Err(Error::Invalid(_))));
    let mut empty_key = base.clone();
    empty_key[0].1 = Vec::new();
    assert!(matches!(
        feed(&empty_key, &empty_key),
        Err(Error::Invalid(_))
    ));
    let mut bucket_back = base.clone();
    bucket_back.push((0, b"zz".to_vec(), Vec::new()));
    assert!(matches!(
        feed(&bucket_back, &bucket_back),
        Err(Error::Invalid(_))
    ));
    let bad_index = vec![(3, b"k".to_vec(), Vec::new())];
    assert!(matches!(
        feed(&bad_index, &bad_index),
        Err(Error::Invalid(_))
    ));
}

/// A file with an inline bucket (as real etcd writes small buckets), built by hand: the
/// root leaf holds "inl" (inline: its page inside the bucket value) and "x" (page 4).
fn file_with_inline_bucket() -> Vec<u8> {
    let mut out = Vec::new();
    write_meta(&mut out, 0, 4, 3, 2, 5);
    write_meta(&mut out, 1, 3, 3, 2, 5);
    new_page(&mut out, 2, 0x10, 0, 16);

    let inline_entries: [(&[u8], &[u8]); 2] = [(b"alpha", b"1"), (b"beta", b"")];
    let inline_size = 16
        + inline_entries
            .iter()
            .map(|(k, v)| 16 + k.len() + v.len())
            .sum::<usize>();
    let mut value = vec![0u8; 16 + inline_size];
    {
        let page = &mut value[16..];
        page[8..10].copy_from_slice(&0x02u16.to_le_bytes());
        page[10..12].copy_from_slice(&2u16.to_le_bytes());
        let mut at = 16 + 2 * 16;
        for (i, (k, v)) in inline_entries.iter().enumerate() {
            put_leaf_element(page, i, &mut at, 0, k, v);
        }
    }
    let mut x_header = [0u8; 16];
    x_header[..8].copy_from_slice(&4u64.to_le_bytes());
    let root_size = 16 + (16 + 3 + value.len()) + (16 + 1 + 16);
    let root = new_page(&mut out, 3, 0x02, 2, root_size);
    let mut at = 16 + 2 * 16;
    put_leaf_element(root, 0, &mut at, 1, b"inl", &value);
    put_leaf_element(root, 1, &mut at, 1, b"x", &x_header);
    let x = new_page(&mut out, 4, 0x02, 1, 16 + 16 + 4);
    let mut at = 16 + 16;
    put_leaf_element(x, 0, &mut at, 0, b"k", b"vvv");
    out
}

#[test]
fn inline_buckets_are_read() {
    let file = file_with_inline_bucket();
    assert_eq!(
        read_back(&file),
        vec![
            (
                b"inl".to_vec(),
                vec![
                    (b"alpha".to_vec(), b"1".to_vec()),
                    (b"beta".to_vec(), Vec::new())
                ]
            ),
            (b"x".to_vec(), vec![(b"k".to_vec(), b"vvv".to_vec())]),
        ]
    );
    assert_eq!(status(&file).unwrap().total_key, 3);
}

#[test]
fn the_valid_meta_with_the_higher_txid_wins() {
    let buckets: Buckets = vec![(b"b".to_vec(), vec![(b"k".to_vec(), b"v".to_vec())])];
    let good = write_all(&borrowed(&buckets));
    // Damage meta 1 (the higher txid): meta 0 still opens the file.
    let mut one_bad = good.clone();
    one_bad[PAGE_BYTES + 16 + 20] ^= 0xff;
    assert_eq!(read_back(&one_bad), buckets);
    let mut zero_bad = good.clone();
    zero_bad[16 + 20] ^= 0xff;
    assert_eq!(read_back(&zero_bad), buckets);
    let mut both_bad = good.clone();
    both_bad[16 + 20] ^= 0xff;
    both_bad[PAGE_BYTES + 16 + 20] ^= 0xff;
    assert!(matches!(
        Reader::open(&both_bad),
        Err(Error::Corrupt { .. })
    ));
    // Not bbolt at all.
    assert!(matches!(Reader::open(b"hello"), Err(Error::NotBbolt(_))));
    assert!(matches!(
        Reader::open(&vec![0u8; 3 * PAGE_BYTES]),
        Err(Error::NotBbolt(_))
    ));
    // Truncated: the meta names more pages than the file holds.
    let mut two_leaves = good.clone();
    two_leaves.truncate(good.len() - PAGE_BYTES);
    assert!(matches!(
        Reader::open(&two_leaves),
        Err(Error::Corrupt { .. })
    ));
}

/// Opens, lists, walks and hashes; any result but a panic or a hang is fine.
fn read_everything(bytes: &[u8]) {
    let Ok(r) = Reader::open(bytes) else {
        let _ = status(bytes);
        return;
    };
    if let Ok(names) = r.bucket_names() {
        for name in names {
            let mut n = 0u64;
            let _ = r.for_each(&name, &mut |k, v| {
                n += (k.len() + v.len()) as u64;
                Ok(())
            });
        }
    }
    let _ = status(bytes);
}

#[test]
fn damaged_files_give_errors_not_panics() {
    let mut rng = Rng(5);
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = (0..1500u32)
        .map(|i| {
            (format!("key{i:05}").into_bytes(), {
                let len = rng.below(30) as usize;
                rng.bytes(len)
            })
        })
        .collect();
    entries.push((b"zbig".to_vec(), rng.bytes(9000)));
    let buckets: Buckets = vec![
        (b"a".to_vec(), entries),
        (b"e".to_vec(), Vec::new()),
        (b"s".to_vec(), vec![(b"x".to_vec(), b"y".to_vec())]),
    ];
    let good = write_all(&borrowed(&buckets));
    let inline = file_with_inline_bucket();
    for file in [&good, &inline] {
        read_everything(file);
        // Truncated anywhere (page boundaries and inside pages).
        for len in (0..file.len())
            .step_by(PAGE_BYTES / 4)
            .chain([1, 79, 80, 4095, 4096])
        {
            read_everything(&file[..len.min(file.len())]);
        }
        // Flipped bytes in every page: the header and elements, and random places.
        for page in 0..file.len() / PAGE_BYTES {
            let start = page * PAGE_BYTES;
            let spots: Vec<usize> = (0..96)
                .chain((0..32).map(|_| rng.below(PAGE_BYTES as u64) as usize))
                .collect();
            for spot in spots {
                for mask in [0x01u8, 0x80, 0xff] {
                    let mut bad = file.clone();
                    bad[start + spot] ^= mask;
                    read_everything(&bad);
                }
            }
        }
    }
    // Random bytes, alone and behind valid metas.
    for _ in 0..200 {
        let len = rng.below(5 * PAGE_BYTES as u64) as usize;
        let noise = rng.bytes(len);
        read_everything(&noise);
        let mut behind = good[..2 * PAGE_BYTES].to_vec();
        behind.extend_from_slice(&noise);
        read_everything(&behind);
    }
    // A branch page whose children all point back at it: bounded, an error.
    let mut cycle = good.clone();
    let r = Reader::open(&good).unwrap();
    assert_eq!(r.page_bytes(), PAGE_BYTES);
    let root_of_a = {
        let root = &good[3 * PAGE_BYTES..4 * PAGE_BYTES];
        let pos = u32_at(root, 16 + 4) as usize;
        let ksize = u32_at(root, 16 + 8) as usize;
        u64_at(root, 16 + pos + ksize)
    };
    let branch = root_of_a as usize * PAGE_BYTES;
    assert_eq!(u16_at(&good, branch + 8), FLAG_BRANCH);
    let count = u16_at(&good, branch + 10) as usize;
    for i in 0..count {
        let e = branch + 16 + i * 16 + 8;
        cycle[e..e + 8].copy_from_slice(&root_of_a.to_le_bytes());
    }
    assert!(matches!(
        Reader::open(&cycle)
            .unwrap()
            .for_each(b"a", &mut |_, _| Ok(())),
        Err(Error::Corrupt { .. })
    ));
}

// ───── bbolt itself: etcdctl and etcd 3.4 ─────

const ETCDCTL: &str = "/usr/bin/etcdctl";
const ETCD: &str = "/usr/bin/etcd";

fn require(binary: &str, package: &str) {
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: install Debian's {package} (etcd 3.4), e.g. `apt-get install {package}`"
    );
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("keel-bbolt-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// A number field of etcdctl's one-line JSON.
fn json_number(json: &str, field: &str) -> u64 {
    let tag = format!("\"{field}\":");
    let at = json
        .find(&tag)
        .unwrap_or_else(|| panic!("no {field} in {json}"))
        + tag.len();
    let digits: String = json[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().unwrap()
}

fn etcdctl_status(path: &Path) -> Status {
    require(ETCDCTL, "etcd-client");
    let out = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(["--write-out", "json", "snapshot", "status"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "etcdctl snapshot status {}: {}{}",
        path.display(),
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    Status {
        hash: json_number(&text, "hash") as u32,
        revision: json_number(&text, "revision") as i64,
        total_key: json_number(&text, "totalKey"),
        total_size: json_number(&text, "totalSize"),
    }
}

/// mvccpb.KeyValue, hand-encoded: key 1, create_revision 2, mod_revision 3, version 4,
/// value 5.
fn key_value_pb(key: &[u8], create: i64, modified: i64, version: i64, value: &[u8]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut out = Vec::new();
    for (field, bytes) in [(1u64, key), (5, value)] {
        if field == 5 {
            for (f, n) in [(2u64, create), (3, modified), (4, version)] {
                out.push((f << 3) as u8);
                varint(&mut out, n as u64);
            }
        }
        if !bytes.is_empty() {
            out.push((field << 3 | 2) as u8);
            varint(&mut out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
    }
    out
}

/// Fields 1 (key) and 5 (value) of an mvccpb.KeyValue.
fn decode_key_value(mut b: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
        }
        v
    }
    let (mut key, mut value) = (Vec::new(), Vec::new());
    while !b.is_empty() {
        let tag = varint(&mut b);
        match tag & 7 {
            0 => {
                varint(&mut b);
            }
            2 => {
                let len = varint(&mut b) as usize;
                let (field, rest) = b.split_at(len);
                match tag >> 3 {
                    1 => key = field.to_vec(),
                    5 => value = field.to_vec(),
                    _ => {}
                }
                b = rest;
            }
            t => panic!("wire type {t} in a KeyValue"),
        }
    }
    (key, value)
}

fn revision_key(main: u64, sub: u64) -> Vec<u8> {
    let mut k = main.to_be_bytes().to_vec();
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    k
}

/// Buckets laid out as etcd 3.4 lays out its db: `key` holds one revision per put (a
/// few txns of several puts), `meta` the consistent index, the others empty.
fn etcd_layout(key_count: u64, big_every: u64, rng: &mut Rng) -> Buckets {
    let mut keys = Vec::new();
    let (mut main, mut sub) = (2u64, 0u64);
    for i in 0..key_count {
        let user_key = format!("/registry/k{i:07}").into_bytes();
        let len = if big_every != 0 && i % big_every == big_every / 2 {
            20 * 1024 + rng.below(100 * 1024) as usize
        } else {
            rng.below(200) as usize
        };
        let value = rng.bytes(len);
        keys.push((
            revision_key(main, sub),
            key_value_pb(&user_key, main as i64, main as i64, 1, &value),
        ));
        if rng.below(4) == 0 {
            sub += 1;
        } else {
            main += 1;
            sub = 0;
        }
    }
    let empty = |n: &str| (n.as_bytes().to_vec(), Vec::new());
    vec![
        empty("alarm"),
        empty("auth"),
        empty("authRoles"),
        empty("authUsers"),
        empty("cluster"),
        (b"key".to_vec(), keys),
        empty("lease"),
        empty("members"),
        empty("members_removed"),
        (
            b"meta".to_vec(),
            vec![(
                b"consistent_index".to_vec(),
                (main + 5).to_be_bytes().to_vec(),
            )],
        ),
    ]
}

fn etcdctl_agrees(buckets: &Buckets, dir: &TempDir, name: &str) {
    let file = write_streaming(buckets, 256 * 1024).unwrap();
    let ours = status(&file).unwrap();
    assert_eq!(ours, status_of(buckets, file.len() as u64));
    let mut snapshot = file.clone();
    snapshot.extend_from_slice(&sha256(&file));
    let path = dir.0.join(name);
    std::fs::write(&path, &snapshot).unwrap();
    assert_eq!(
        status(&snapshot).unwrap(),
        ours,
        "the trailer changes nothing"
    );
    assert_eq!(etcdctl_status(&path), ours, "{name}");
}

#[test]
fn etcd_ctl_reads_our_files() {
    require(ETCDCTL, "etcd-client");
    let dir = TempDir::new("ctl");
    let mut rng = Rng(11);
    etcdctl_agrees(&etcd_layout(300, 0, &mut rng), &dir, "small.db");
    etcdctl_agrees(&etcd_layout(25_000, 5000, &mut rng), &dir, "big.db");
    for seed in 0..3 {
        let mut rng = Rng(100 + seed);
        let buckets = random_buckets(&mut rng, true);
        etcdctl_agrees(&buckets, &dir, &format!("random{seed}.db"));
    }
    // bbolt opens our file read-write too: `snapshot restore` checks the sha256, then
    // rewrites the members and meta buckets in place.
    let path = dir.0.join("small.db");
    let out = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.0.join("restored"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl snapshot restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = std::fs::read(dir.0.join("restored/member/snap/db")).unwrap();
    let r = Reader::open(&db).unwrap();
    let mut n = 0;
    assert!(r
        .for_each(b"key", &mut |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap());
    assert_eq!(n, 300);
}

/// The etcd this test started, killed by PID when dropped (also on panic).
struct EtcdProcess {
    child: Child,
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcdctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--dial-timeout",
            "2s",
            "--command-timeout",
            "10s",
        ])
        .args(args)
        .output()
        .unwrap()
}

/// Starts etcd on two kernel-given loopback ports; waits until it answers.
fn start_etcd(dir: &TempDir) -> (EtcdProcess, String) {
    require(ETCD, "etcd-server");
    require(ETCDCTL, "etcd-client");
    let mut last_log = String::new();
    for attempt in 0..3 {
        let (client, peer) = (crate::testing::free_port(), crate::testing::free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log_path = dir.0.join(format!("etcd-{attempt}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(ETCD)
            .arg("--name")
            .arg("bbolt-test")
            .arg("--data-dir")
            .arg(dir.0.join(format!("data-{attempt}")))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .arg("--initial-cluster")
            .arg(format!("bbolt-test={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut etcd = EtcdProcess { child };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = etcd.child.try_wait() {
                break;
            }
            if etcdctl(&client_url, &["endpoint", "health"])
                .status
                .success()
            {
                return (etcd, client_url);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        drop(etcd);
        last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    }
    panic!("etcd did not start in 3 attempts; last log:\n{last_log}");
}

#[test]
fn etcd_snapshot_of_a_real_server_reads_back() {
    let dir = TempDir::new("server");
    let (etcd, endpoint) = start_etcd(&dir);
    let mut expected: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    let mut puts = 0u64;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .unwrap();
        for batch in 0..20u32 {
            let mut ops = Vec::new();
            for i in 0..100u32 {
                let key = format!("/k/{:05}", batch * 100 + i).into_bytes();
                let value =
                    format!("value-{batch}-{i}-{}", "x".repeat((i % 40) as usize)).into_bytes();
                expected.insert(key.clone(), value.clone());
                ops.push(etcd_client::TxnOp::put(key, value, None));
            }
            puts += ops.len() as u64;
            client
                .txn(etcd_client::Txn::new().and_then(ops))
                .await
                .unwrap();
        }
        for i in 0..5u32 {
            let key = format!("/big/{i}").into_bytes();
            let value = vec![b'a' + i as u8; 10 * 1024 + 7000 * i as usize];
            expected.insert(key.clone(), value.clone());
            client.put(key, value, None).await.unwrap();
            puts += 1;
        }
        // One key written again: two revisions of it in the db.
        client.put("/k/00000", "again", None).await.unwrap();
        expected.insert(b"/k/00000".to_vec(), b"again".to_vec());
        puts += 1;
    });
    let path = dir.0.join("snap.db");
    let out = etcdctl(&endpoint, &["snapshot", "save", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "etcdctl snapshot save: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(etcd);

    let snapshot = std::fs::read(&path).unwrap();
    assert!(snapshot.len() > 32 && (snapshot.len() - 32).is_multiple_of(PAGE_BYTES));
    let (db, trailer) = snapshot.split_at(snapshot.len() - 32);
    assert_eq!(sha256(db), trailer, "snapshot sha256 trailer");

    let r = Reader::open(db).unwrap();
    let names = r.bucket_names().unwrap();
    let known = [
        "alarm",
        "auth",
        "authRoles",
        "authUsers",
        "cluster",
        "key",
        "lease",
        "members",
        "members_removed",
        "meta",
    ];
    let names: Vec<String> = names
        .into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .collect();
    assert!(
        names.iter().all(|n| known.contains(&n.as_str())),
        "{names:?}"
    );
    for must in ["key", "meta", "members", "cluster"] {
        assert!(names.iter().any(|n| n == must), "no {must} in {names:?}");
    }
    let mut latest: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    let mut revisions = 0u64;
    assert!(r
        .for_each(b"key", &mut |k, v| {
            assert_eq!(k.len(), 17);
            let (key, value) = decode_key_value(v);
            latest.insert(key, value);
            revisions += 1;
            Ok(())
        })
        .unwrap());
    assert_eq!(revisions, puts);
    assert_eq!(latest, expected);
    let mut consistent_index = None;
    assert!(r
        .for_each(b"meta", &mut |k, v| {
            if k == b"consistent_index" {
                consistent_index = Some(u64::from_be_bytes(v.try_into().unwrap()));
            }
            Ok(())
        })
        .unwrap());
    assert!(consistent_index.is_some_and(|i| i > puts / 100));

    let ours = status(db).unwrap();
    assert_eq!(ours, etcdctl_status(&path));
    assert_eq!(ours.total_size, db.len() as u64);
    read_everything(db);
}
