//! The WAL record codec: pure functions over bytes, no I/O.
//!
//! # Record layout (all integers little-endian, every record starts 8-aligned)
//!
//! ```text
//!  offset  size  field
//!  0       4     len       payload length in bytes (u32)
//!  4       1     type      RecordType (1..=5; 0 is never written, so a zero header = end)
//!  5       3     pad       zero
//!  8       4     crc       crc32 (crc32fast, IEEE polynomial) over bytes [0, 8) of this
//!                          header, then the payload, then the tail padding, seeded with
//!                          the crc of the previous record (the chain)
//!  12      len   payload
//!  12+len  0..7  padding   zero, so the next record starts 8-aligned
//! ```
//!
//! # Payloads
//!
//! ```text
//!  SegmentHeader (32 bytes): magic u64 "KEELWAL\0" | version u32 | prev_crc u32 | seq u64
//!                            | first_index u64
//!  Metadata:                 the opaque bytes, as given to `Wal::create`
//!  HardState (24 bytes):     term u64 | vote u64 | commit u64
//!  SnapshotMarker (16):      index u64 | term u64
//!  Entry (25 + n + m):       term u64 | index u64 | data_len u32 | context_len u32
//!                            | entry_type u8 | data (n) | context (m)
//! ```
//!
//! The SegmentHeader is the first record of every segment. Its crc is seeded with its own
//! `prev_crc` field (the crc of the previous segment's last record), so a segment can be
//! verified on its own after older segments are released, and the chain across segments is
//! checked by comparing `prev_crc` with the previous segment's last crc.
//!
//! Decoding is defensive: every length is checked against the bytes that remain and
//! against `record_bytes_max` before anything is allocated, no input panics, and every
//! allocation is bounded by the input's size.

use super::{Entry, HardState, SnapshotMarker};

/// Bytes of a record header.
pub const HEADER_BYTES: usize = 12;
/// Records start at multiples of this.
pub const ALIGN_BYTES: usize = 8;
/// `b"KEELWAL\0"` read as a little-endian u64.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"KEELWAL\0");
pub const FORMAT_VERSION: u32 = 1;
/// Record cap used by [`decode_segment_bytes`] (the default `batch_bytes_max`).
pub const RECORD_BYTES_MAX_DEFAULT: usize = 4 << 20;

const SEGMENT_HEADER_PAYLOAD_BYTES: usize = 32;
const HARD_STATE_PAYLOAD_BYTES: usize = 24;
const SNAPSHOT_MARKER_PAYLOAD_BYTES: usize = 16;
const ENTRY_FIXED_PAYLOAD_BYTES: usize = 25;

const _: () = assert!(HEADER_BYTES.is_multiple_of(4) && ALIGN_BYTES.is_power_of_two());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    SegmentHeader = 1,
    Metadata = 2,
    HardState = 3,
    SnapshotMarker = 4,
    Entry = 5,
}

impl RecordType {
    fn from_u8(b: u8) -> Option<RecordType> {
        Some(match b {
            1 => RecordType::SegmentHeader,
            2 => RecordType::Metadata,
            3 => RecordType::HardState,
            4 => RecordType::SnapshotMarker,
            5 => RecordType::Entry,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub seq: u64,
    pub first_index: u64,
    /// The crc of the last record of the previous segment (0 for the first segment).
    pub prev_crc: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    SegmentHeader(SegmentHeader),
    Metadata(Vec<u8>),
    HardState(HardState),
    SnapshotMarker(SnapshotMarker),
    Entry(Entry),
}

impl Record {
    fn record_type(&self) -> RecordType {
        match self {
            Record::SegmentHeader(_) => RecordType::SegmentHeader,
            Record::Metadata(_) => RecordType::Metadata,
            Record::HardState(_) => RecordType::HardState,
            Record::SnapshotMarker(_) => RecordType::SnapshotMarker,
            Record::Entry(_) => RecordType::Entry,
        }
    }

    fn payload_bytes(&self) -> usize {
        match self {
            Record::SegmentHeader(_) => SEGMENT_HEADER_PAYLOAD_BYTES,
            Record::Metadata(m) => m.len(),
            Record::HardState(_) => HARD_STATE_PAYLOAD_BYTES,
            Record::SnapshotMarker(_) => SNAPSHOT_MARKER_PAYLOAD_BYTES,
            Record::Entry(e) => ENTRY_FIXED_PAYLOAD_BYTES + e.data.len() + e.context.len(),
        }
    }

    /// Bytes this record takes on disk, header and padding included.
    pub fn encoded_bytes(&self) -> usize {
        record_bytes(self.payload_bytes())
    }
}

/// On-disk size of a record with `payload_bytes` of payload.
pub fn record_bytes(payload_bytes: usize) -> usize {
    (HEADER_BYTES + payload_bytes).div_ceil(ALIGN_BYTES) * ALIGN_BYTES
}

fn crc_of(prev_crc: u32, header8: &[u8], rest: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(prev_crc);
    h.update(header8);
    h.update(rest);
    h.finalize()
}

/// Appends `rec` to `out`, chained from `prev_crc`; returns the record's crc.
/// For a SegmentHeader the seed is its own `prev_crc` field (which must equal `prev_crc`).
pub fn encode_record(out: &mut Vec<u8>, rec: &Record, prev_crc: u32) -> u32 {
    let start = out.len();
    assert_eq!(start % ALIGN_BYTES, 0, "records start 8-aligned");
    let payload_bytes = rec.payload_bytes();
    let len = u32::try_from(payload_bytes).expect("record payload exceeds u32");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[rec.record_type() as u8, 0, 0, 0]);
    out.extend_from_slice(&[0; 4]); // crc, filled below
    match rec {
        Record::SegmentHeader(h) => {
            assert_eq!(
                h.prev_crc, prev_crc,
                "segment header must carry the chain seed"
            );
            out.extend_from_slice(&SEGMENT_MAGIC.to_le_bytes());
            out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            out.extend_from_slice(&h.prev_crc.to_le_bytes());
            out.extend_from_slice(&h.seq.to_le_bytes());
            out.extend_from_slice(&h.first_index.to_le_bytes());
        }
        Record::Metadata(m) => out.extend_from_slice(m),
        Record::HardState(hs) => {
            out.extend_from_slice(&hs.term.to_le_bytes());
            out.extend_from_slice(&hs.vote.to_le_bytes());
            out.extend_from_slice(&hs.commit.to_le_bytes());
        }
        Record::SnapshotMarker(m) => {
            out.extend_from_slice(&m.index.to_le_bytes());
            out.extend_from_slice(&m.term.to_le_bytes());
        }
        Record::Entry(e) => {
            let data_len = u32::try_from(e.data.len()).expect("entry data exceeds u32");
            let context_len = u32::try_from(e.context.len()).expect("entry context exceeds u32");
            out.extend_from_slice(&e.term.to_le_bytes());
            out.extend_from_slice(&e.index.to_le_bytes());
            out.extend_from_slice(&data_len.to_le_bytes());
            out.extend_from_slice(&context_len.to_le_bytes());
            out.push(e.entry_type);
            out.extend_from_slice(&e.data);
            out.extend_from_slice(&e.context);
        }
    }
    assert_eq!(out.len() - start, HEADER_BYTES + payload_bytes);
    out.resize(start + record_bytes(payload_bytes), 0);
    let crc = crc_of(
        prev_crc,
        &out[start..start + 8],
        &out[start + HEADER_BYTES..],
    );
    out[start + 8..start + HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// A record header that passed the structural checks (not yet the crc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlausibleHeader {
    pub record_type: RecordType,
    pub payload_bytes: usize,
    pub stored_crc: u32,
    /// Offset just past this record (header + payload + padding).
    pub next_offset: usize,
}

/// What sits at one offset of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A valid record, chained correctly.
    Record {
        record: Record,
        crc: u32,
        next_offset: usize,
    },
    /// A zero header, or the end of the bytes: no more records.
    End,
    /// Not a valid record. `header` is set when the header looked sane but the body did not
    /// check out (crc mismatch or bad payload).
    Bad {
        what: String,
        header: Option<PlausibleHeader>,
    },
}

fn bad(what: impl Into<String>, header: Option<PlausibleHeader>) -> Step {
    Step::Bad {
        what: what.into(),
        header,
    }
}

/// Checks the header at `offset` without looking at the payload's crc.
pub fn parse_header(
    bytes: &[u8],
    offset: usize,
    record_bytes_max: usize,
) -> Result<Option<PlausibleHeader>, String> {
    let rest = bytes.get(offset..).unwrap_or(&[]);
    if rest.len() < HEADER_BYTES {
        return if rest.iter().all(|&b| b == 0) {
            Ok(None)
        } else {
            Err(format!("short record header ({} bytes left)", rest.len()))
        };
    }
    let h = &rest[..HEADER_BYTES];
    if h.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let payload_bytes = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let record_type =
        RecordType::from_u8(h[4]).ok_or_else(|| format!("bad record type {}", h[4]))?;
    if h[5..8] != [0, 0, 0] {
        return Err("non-zero header padding".into());
    }
    let total = record_bytes(payload_bytes);
    if total > record_bytes_max {
        return Err(format!(
            "record length {total} exceeds cap {record_bytes_max}"
        ));
    }
    if total > rest.len() {
        return Err(format!("short record: {total} bytes, {} left", rest.len()));
    }
    let stored_crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    Ok(Some(PlausibleHeader {
        record_type,
        payload_bytes,
        stored_crc,
        next_offset: offset + total,
    }))
}

/// Decodes the record at `offset`. `prev_crc` is the chain seed; `None` means "the first
/// record of a segment", which must be a SegmentHeader seeded by its own `prev_crc`.
pub fn decode_at(
    bytes: &[u8],
    offset: usize,
    prev_crc: Option<u32>,
    record_bytes_max: usize,
) -> Step {
    if !offset.is_multiple_of(ALIGN_BYTES) {
        return bad("unaligned record offset", None);
    }
    let header = match parse_header(bytes, offset, record_bytes_max) {
        Ok(Some(h)) => h,
        Ok(None) => return Step::End,
        Err(what) => return bad(what, None),
    };
    let body = &bytes[offset + HEADER_BYTES..header.next_offset];
    let payload = &body[..header.payload_bytes];
    let record = match decode_payload(header.record_type, payload) {
        Ok(r) => r,
        Err(what) => return bad(what, Some(header)),
    };
    let is_segment_header = matches!(record, Record::SegmentHeader(_));
    let seed = match (prev_crc, &record) {
        (None, Record::SegmentHeader(h)) => h.prev_crc,
        (None, _) => return bad("segment does not start with a segment header", Some(header)),
        (Some(_), _) if is_segment_header => {
            return bad("segment header in the middle of a segment", Some(header))
        }
        (Some(c), _) => c,
    };
    let crc = crc_of(seed, &bytes[offset..offset + 8], body);
    if crc != header.stored_crc {
        return bad(
            format!(
                "crc mismatch: stored {:#010x}, computed {crc:#010x}",
                header.stored_crc
            ),
            Some(header),
        );
    }
    Step::Record {
        record,
        crc,
        next_offset: header.next_offset,
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err(format!(
                "payload too short: need {n}, have {}",
                self.bytes.len()
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn finish(&self) -> Result<(), String> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(format!("{} trailing payload bytes", self.bytes.len()))
        }
    }
}

fn decode_payload(record_type: RecordType, payload: &[u8]) -> Result<Record, String> {
    let mut r = Reader { bytes: payload };
    let record = match record_type {
        RecordType::SegmentHeader => {
            if r.u64()? != SEGMENT_MAGIC {
                return Err("bad segment magic".into());
            }
            let version = r.u32()?;
            if version != FORMAT_VERSION {
                return Err(format!("unsupported WAL format version {version}"));
            }
            let prev_crc = r.u32()?;
            let seq = r.u64()?;
            let first_index = r.u64()?;
            Record::SegmentHeader(SegmentHeader {
                seq,
                first_index,
                prev_crc,
            })
        }
        RecordType::Metadata => Record::Metadata(r.take(payload.len())?.to_vec()),
        RecordType::HardState => Record::HardState(HardState {
            term: r.u64()?,
            vote: r.u64()?,
            commit: r.u64()?,
        }),
        RecordType::SnapshotMarker => Record::SnapshotMarker(SnapshotMarker {
            index: r.u64()?,
            term: r.u64()?,
        }),
        RecordType::Entry => {
            let term = r.u64()?;
            let index = r.u64()?;
            let data_len = r.u32()? as usize;
            let context_len = r.u32()? as usize;
            let entry_type = r.u8()?;
            let data = bytes::Bytes::copy_from_slice(r.take(data_len)?);
            let context = bytes::Bytes::copy_from_slice(r.take(context_len)?);
            Record::Entry(Entry {
                entry_type,
                term,
                index,
                data,
                context,
            })
        }
    };
    r.finish()?;
    Ok(record)
}

/// Why a segment scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A zero header or the end of the bytes.
    Clean,
    /// A bad record at `offset`.
    Bad {
        offset: u64,
        what: String,
        /// Evidence of damage in the middle rather than a torn write: see
        /// [`is_middle_damage`].
        middle_damage: bool,
    },
}

/// Sector size assumed for torn writes: the smallest unit a device writes atomically.
pub const SECTOR_BYTES: usize = 512;

/// True when the bad record at `offset` is damaged in the middle of the data, not torn.
///
/// The evidence: the record's length field is sane, and the record after it validates when
/// chained from the bad record's original crc (the stored crc when the damage is in the
/// payload or type, the crc recomputed over the record when it is in the crc field). A torn
/// write can produce the same picture for a record spanning several sectors when a sector
/// inside it was lost and a later one persisted; since unwritten WAL space is always zero,
/// such a lost sector reads as zeros, so a record holding a whole aligned zero sector after
/// its header is given the benefit of the doubt.
pub fn is_middle_damage(
    bytes: &[u8],
    offset: usize,
    prev_crc: Option<u32>,
    record_bytes_max: usize,
) -> bool {
    let Some(header) = bytes.get(offset..offset + HEADER_BYTES) else {
        return false;
    };
    let payload_bytes = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let total = record_bytes(payload_bytes);
    let Some(next_offset) = offset.checked_add(total) else {
        return false;
    };
    if total > record_bytes_max || next_offset > bytes.len() || payload_bytes == 0 {
        return false;
    }
    let stored_crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let computed = crc_of(
        prev_crc.unwrap_or(0),
        &header[..8],
        &bytes[offset + HEADER_BYTES..next_offset],
    );
    let next_validates = [stored_crc, computed].into_iter().any(|seed| {
        matches!(
            decode_at(bytes, next_offset, Some(seed), record_bytes_max),
            Step::Record { .. }
        )
    });
    next_validates && !holds_zero_sector(bytes, offset + HEADER_BYTES, next_offset)
}

/// True when an aligned, all-zero `SECTOR_BYTES` block lies within `[start, end)`.
fn holds_zero_sector(bytes: &[u8], start: usize, end: usize) -> bool {
    let mut s = start.next_multiple_of(SECTOR_BYTES);
    while s + SECTOR_BYTES <= end {
        if bytes[s..s + SECTOR_BYTES].iter().all(|&b| b == 0) {
            return true;
        }
        s += SECTOR_BYTES;
    }
    false
}

/// The result of scanning one segment's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// Every valid record in order with its offset; the first is the SegmentHeader.
    pub records: Vec<(u64, Record)>,
    /// The crc of the last valid record (the chain value to continue from).
    pub last_crc: u32,
    /// The offset just past the last valid record.
    pub end_offset: u64,
    pub stop: Stop,
    /// The offset of the last non-zero byte at or after `end_offset`, if any.
    pub last_nonzero_offset: Option<u64>,
}

impl SegmentScan {
    pub fn segment_header(&self) -> Option<SegmentHeader> {
        match self.records.first() {
            Some((_, Record::SegmentHeader(h))) => Some(*h),
            _ => None,
        }
    }
}

/// Scans a whole segment. Pure, never panics, allocates at most about `bytes.len()`.
pub fn scan_segment(bytes: &[u8], record_bytes_max: usize) -> SegmentScan {
    let mut records = Vec::new();
    let mut offset = 0usize;
    let mut prev_crc = None;
    let stop = loop {
        match decode_at(bytes, offset, prev_crc, record_bytes_max) {
            Step::Record {
                record,
                crc,
                next_offset,
            } => {
                assert!(next_offset > offset && next_offset <= bytes.len());
                records.push((offset as u64, record));
                prev_crc = Some(crc);
                offset = next_offset;
            }
            Step::End => break Stop::Clean,
            Step::Bad { what, .. } => {
                let middle_damage = is_middle_damage(bytes, offset, prev_crc, record_bytes_max);
                break Stop::Bad {
                    offset: offset as u64,
                    what,
                    middle_damage,
                };
            }
        }
    };
    let last_nonzero_offset = bytes
        .get(offset..)
        .and_then(|tail| tail.iter().rposition(|&b| b != 0))
        .map(|p| (offset + p) as u64);
    SegmentScan {
        records,
        last_crc: prev_crc.unwrap_or(0),
        end_offset: offset as u64,
        stop,
        last_nonzero_offset,
    }
}

/// Entry point for the fuzz target: scans `bytes` as one segment with the default record
/// cap. Pure; must never panic on any input.
pub fn decode_segment_bytes(bytes: &[u8]) -> SegmentScan {
    scan_segment(bytes, RECORD_BYTES_MAX_DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_records() -> Vec<Record> {
        vec![
            Record::Metadata(b"cluster-7".to_vec()),
            Record::HardState(HardState {
                term: 3,
                vote: 2,
                commit: 9,
            }),
            Record::SnapshotMarker(SnapshotMarker { index: 4, term: 2 }),
            Record::Entry(Entry {
                entry_type: 1,
                term: 3,
                index: 10,
                data: bytes::Bytes::from_static(b"put k v"),
                context: bytes::Bytes::from_static(b"c"),
            }),
            Record::Entry(Entry {
                entry_type: 0,
                term: 3,
                index: 11,
                data: bytes::Bytes::new(),
                context: bytes::Bytes::new(),
            }),
        ]
    }

    fn sample_segment() -> Vec<u8> {
        let mut out = Vec::new();
        let h = SegmentHeader {
            seq: 5,
            first_index: 10,
            prev_crc: 0xdead_beef,
        };
        let mut crc = encode_record(&mut out, &Record::SegmentHeader(h), h.prev_crc);
        for r in sample_records() {
            crc = encode_record(&mut out, &r, crc);
        }
        out
    }

    #[test]
    fn record_round_trip_and_alignment() {
        let bytes = sample_segment();
        assert_eq!(bytes.len() % ALIGN_BYTES, 0);
        let scan = decode_segment_bytes(&bytes);
        assert_eq!(scan.stop, Stop::Clean);
        assert_eq!(scan.end_offset, bytes.len() as u64);
        assert_eq!(scan.last_nonzero_offset, None);
        let got: Vec<Record> = scan
            .records
            .iter()
            .skip(1)
            .map(|(_, r)| r.clone())
            .collect();
        assert_eq!(got, sample_records());
        let h = scan.segment_header().unwrap();
        assert_eq!((h.seq, h.first_index, h.prev_crc), (5, 10, 0xdead_beef));
        for (off, r) in &scan.records {
            assert_eq!(off % ALIGN_BYTES as u64, 0);
            assert!(r.encoded_bytes() % ALIGN_BYTES == 0);
        }
    }

    #[test]
    fn crc_chain_is_seeded() {
        // The same record chained from a different seed must not validate.
        let mut out = Vec::new();
        let h = SegmentHeader {
            seq: 1,
            first_index: 1,
            prev_crc: 0,
        };
        let crc = encode_record(&mut out, &Record::SegmentHeader(h), 0);
        let start = out.len();
        encode_record(&mut out, &Record::HardState(HardState::default()), crc);
        assert!(matches!(
            decode_at(&out, start, Some(crc), 1 << 20),
            Step::Record { .. }
        ));
        assert!(matches!(
            decode_at(&out, start, Some(crc ^ 1), 1 << 20),
            Step::Bad { .. }
        ));
    }

    #[test]
    fn trailing_zeros_are_clean_end() {
        let mut bytes = sample_segment();
        let n = bytes.len();
        bytes.resize(n + 4096, 0);
        let scan = decode_segment_bytes(&bytes);
        assert_eq!(scan.stop, Stop::Clean);
        assert_eq!(scan.end_offset, n as u64);
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let bytes = sample_segment();
        let clean = decode_segment_bytes(&bytes);
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let scan = decode_segment_bytes(&b);
            assert_ne!(scan.stop, Stop::Clean, "flip of bit {bit} went unnoticed");
            assert!(scan.records.len() < clean.records.len());
        }
    }

    /// xorshift64*: deterministic garbage without a rand dependency.
    pub(crate) fn next_rand(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn decode_never_panics_on_garbage_or_mutations() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..3000 {
            let n = (next_rand(&mut s) % 600) as usize;
            let garbage: Vec<u8> = (0..n).map(|_| next_rand(&mut s) as u8).collect();
            let scan = decode_segment_bytes(&garbage);
            assert!(scan.end_offset as usize <= garbage.len());
        }
        let valid = sample_segment();
        for _ in 0..5000 {
            let mut b = valid.clone();
            for _ in 0..1 + next_rand(&mut s) % 4 {
                let i = (next_rand(&mut s) as usize) % b.len();
                match next_rand(&mut s) % 3 {
                    0 => b[i] = next_rand(&mut s) as u8,
                    1 => b.truncate(i),
                    // Large lengths must be rejected without allocating.
                    _ => {
                        let at = i & !7;
                        let end = (at + 4).min(b.len());
                        b[at..end].fill(0xff)
                    }
                }
                if b.is_empty() {
                    break;
                }
            }
            let scan = decode_segment_bytes(&b);
            assert!(scan.end_offset as usize <= b.len());
            if let Some(p) = scan.last_nonzero_offset {
                assert!(p >= scan.end_offset && b[p as usize] != 0);
            }
        }
    }
}
