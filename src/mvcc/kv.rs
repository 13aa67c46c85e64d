//! `KeyValue` and the record stored in the Revision tree.
//!
//! Record layout (the value of a Revision-tree entry):
//!
//! ```text
//! byte 0      flag: 0 = put, 1 = tombstone
//! bytes 1..   mvccpb.KeyValue protobuf wire bytes:
//!               field 1 key             (wire type 2, bytes)
//!               field 2 create_revision (wire type 0, int64 varint)
//!               field 3 mod_revision    (wire type 0, int64 varint)
//!               field 4 version         (wire type 0, int64 varint)
//!               field 5 value           (wire type 2, bytes)
//!               field 6 lease           (wire type 0, int64 varint)
//!             fields in this order, proto3 defaults (0, empty) omitted.
//! ```
//!
//! A put record holds the whole KeyValue; a tombstone holds only `key` and `mod_revision`
//! (the deleting revision), which is exactly the `kv` of an etcd DELETE watch event. So the
//! server can copy `&record[1..]` straight into a RangeResponse or an Event.

use std::fmt;

/// etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Put = 0,
    Tombstone = 1,
}

/// A malformed record: what was wrong and at which byte offset of the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecError {
    pub offset: usize,
    pub what: &'static str,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed KeyValue record at byte {}: {}",
            self.offset, self.what
        )
    }
}

impl std::error::Error for CodecError {}

const WIRE_VARINT: u8 = 0;
const WIRE_LEN: u8 = 2;

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_int64_field(out: &mut Vec<u8>, field: u8, v: i64) {
    if v != 0 {
        out.push(field << 3 | WIRE_VARINT);
        // int64 is encoded as the two's complement u64 (10 bytes when negative).
        put_varint(out, v as u64);
    }
}

fn put_bytes_field(out: &mut Vec<u8>, field: u8, v: &[u8]) {
    if !v.is_empty() {
        out.push(field << 3 | WIRE_LEN);
        put_varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

pub(crate) fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn int64_field_len(v: i64) -> usize {
    if v == 0 {
        0
    } else {
        1 + varint_len(v as u64)
    }
}

fn bytes_field_len(v: &[u8]) -> usize {
    if v.is_empty() {
        0
    } else {
        1 + varint_len(v.len() as u64) + v.len()
    }
}

/// The fields of a KeyValue by reference, so the write path encodes without copying.
#[derive(Clone, Copy, Debug)]
pub struct KeyValueRef<'a> {
    pub key: &'a [u8],
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: &'a [u8],
    pub lease: i64,
}

impl KeyValue {
    pub fn as_ref(&self) -> KeyValueRef<'_> {
        KeyValueRef {
            key: &self.key,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: &self.value,
            lease: self.lease,
        }
    }

    /// Protobuf wire bytes of this KeyValue.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.as_ref().encode(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<KeyValue, CodecError> {
        decode_key_value(bytes, 0)
    }
}

impl KeyValueRef<'_> {
    pub fn to_key_value(&self) -> KeyValue {
        KeyValue {
            key: self.key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value.to_vec(),
            lease: self.lease,
        }
    }

    pub fn encoded_len(&self) -> usize {
        bytes_field_len(self.key)
            + int64_field_len(self.create_revision)
            + int64_field_len(self.mod_revision)
            + int64_field_len(self.version)
            + bytes_field_len(self.value)
            + int64_field_len(self.lease)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        put_bytes_field(out, 1, self.key);
        put_int64_field(out, 2, self.create_revision);
        put_int64_field(out, 3, self.mod_revision);
        put_int64_field(out, 4, self.version);
        put_bytes_field(out, 5, self.value);
        put_int64_field(out, 6, self.lease);
    }
}

/// Appends a put record (flag + KeyValue) to `out`.
pub fn encode_put_record(kv: &KeyValueRef<'_>, out: &mut Vec<u8>) {
    out.push(RecordKind::Put as u8);
    kv.encode(out);
}

/// Appends a tombstone record for `key` deleted at main revision `mod_revision`.
pub fn encode_tombstone_record(key: &[u8], mod_revision: i64, out: &mut Vec<u8>) {
    out.push(RecordKind::Tombstone as u8);
    let kv = KeyValueRef {
        key,
        create_revision: 0,
        mod_revision,
        version: 0,
        value: &[],
        lease: 0,
    };
    kv.encode(out);
}

/// Decodes a Revision-tree value. Never panics; any malformed input is an error.
pub fn decode_record(bytes: &[u8]) -> Result<(RecordKind, KeyValue), CodecError> {
    let (kind, kv) = decode_record_ref(bytes)?;
    Ok((kind, kv.to_key_value()))
}

/// [`decode_record`] without copying: key and value borrow from `bytes`.
#[inline]
pub fn decode_record_ref(bytes: &[u8]) -> Result<(RecordKind, KeyValueRef<'_>), CodecError> {
    let kind = match bytes.first() {
        None => {
            return Err(CodecError {
                offset: 0,
                what: "empty record",
            })
        }
        Some(0) => RecordKind::Put,
        Some(1) => RecordKind::Tombstone,
        Some(_) => {
            return Err(CodecError {
                offset: 0,
                what: "unknown record flag",
            })
        }
    };
    let kv = decode_key_value_ref(&bytes[1..], 1)?;
    if kv.key.is_empty() {
        return Err(CodecError {
            offset: 1,
            what: "record without a key",
        });
    }
    Ok((kind, kv))
}

/// The record's kind and the KeyValue wire bytes, without decoding them.
pub fn split_record(bytes: &[u8]) -> Result<(RecordKind, &[u8]), CodecError> {
    match bytes.first() {
        Some(0) => Ok((RecordKind::Put, &bytes[1..])),
        Some(1) => Ok((RecordKind::Tombstone, &bytes[1..])),
        None => Err(CodecError {
            offset: 0,
            what: "empty record",
        }),
        Some(_) => Err(CodecError {
            offset: 0,
            what: "unknown record flag",
        }),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, what: &'static str) -> CodecError {
        CodecError {
            offset: self.base + self.pos,
            what,
        }
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(self.err("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.varint()?;
        let rest = self.bytes.len() - self.pos;
        if len > rest as u64 {
            return Err(self.err("length runs past the end"));
        }
        let out = &self.bytes[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(out)
    }
}

/// Decodes bare `mvccpb.KeyValue` wire bytes (no record flag), as etcd stores them.
pub fn decode_key_value_bytes(bytes: &[u8]) -> Result<KeyValueRef<'_>, CodecError> {
    decode_key_value_ref(bytes, 0)
}

fn decode_key_value(bytes: &[u8], base: usize) -> Result<KeyValue, CodecError> {
    decode_key_value_ref(bytes, base).map(|kv| kv.to_key_value())
}

#[inline]
fn decode_key_value_ref(bytes: &[u8], base: usize) -> Result<KeyValueRef<'_>, CodecError> {
    let mut r = Reader {
        bytes,
        pos: 0,
        base,
    };
    let mut kv = KeyValueRef {
        key: &[],
        create_revision: 0,
        mod_revision: 0,
        version: 0,
        value: &[],
        lease: 0,
    };
    let mut last_field = 0u64;
    while r.pos < bytes.len() {
        let tag = r.varint()?;
        let (field, wire) = (tag >> 3, (tag & 7) as u8);
        // Our encoder writes each field at most once, in order; anything else is damage.
        if field <= last_field {
            return Err(r.err("field out of order or repeated"));
        }
        last_field = field;
        match (field, wire) {
            (1, WIRE_LEN) => kv.key = r.bytes()?,
            (5, WIRE_LEN) => kv.value = r.bytes()?,
            (2, WIRE_VARINT) => kv.create_revision = r.varint()? as i64,
            (3, WIRE_VARINT) => kv.mod_revision = r.varint()? as i64,
            (4, WIRE_VARINT) => kv.version = r.varint()? as i64,
            (6, WIRE_VARINT) => kv.lease = r.varint()? as i64,
            (1..=6, _) => return Err(r.err("wrong wire type")),
            _ => return Err(r.err("unknown field")),
        }
    }
    Ok(kv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyValue {
        KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 300,
            version: 7,
            value: b"bar".to_vec(),
            lease: 0x1234_5678_9abc,
        }
    }

    #[test]
    fn key_value_wire_bytes_match_protobuf() {
        let mut out = Vec::new();
        sample().encode(&mut out);
        // Hand-computed protobuf encoding of the sample.
        let want: Vec<u8> = [
            &[0x0a, 3][..],
            b"foo",
            &[0x10, 2],
            &[0x18, 0xac, 0x02],
            &[0x20, 7],
            &[0x2a, 3],
            b"bar",
            &[0x30, 0xbc, 0xb5, 0xe2, 0xb3, 0xc5, 0xc6, 0x04],
        ]
        .concat();
        assert_eq!(out, want);
        assert_eq!(out.len(), sample().as_ref().encoded_len());
        assert_eq!(KeyValue::decode(&out).unwrap(), sample());
    }

    #[test]
    fn defaults_are_omitted_and_negative_is_ten_bytes() {
        let mut out = Vec::new();
        KeyValue {
            key: b"k".to_vec(),
            ..Default::default()
        }
        .encode(&mut out);
        assert_eq!(out, vec![0x0a, 1, b'k']);
        out.clear();
        KeyValue {
            key: b"k".to_vec(),
            lease: -1,
            ..Default::default()
        }
        .encode(&mut out);
        assert_eq!(out.len(), 3 + 1 + 10);
        assert_eq!(KeyValue::decode(&out).unwrap().lease, -1);
    }

    #[test]
    fn records_round_trip() {
        let mut out = Vec::new();
        encode_put_record(&sample().as_ref(), &mut out);
        assert_eq!(decode_record(&out).unwrap(), (RecordKind::Put, sample()));
        out.clear();
        encode_tombstone_record(b"foo", 9, &mut out);
        let (kind, kv) = decode_record(&out).unwrap();
        assert_eq!(kind, RecordKind::Tombstone);
        assert_eq!(
            kv,
            KeyValue {
                key: b"foo".to_vec(),
                mod_revision: 9,
                ..Default::default()
            }
        );
    }

    #[test]
    fn malformed_records_are_errors() {
        let mut good = Vec::new();
        encode_put_record(&sample().as_ref(), &mut good);
        assert!(decode_record(&[]).is_err());
        assert!(decode_record(&[7]).is_err());
        assert!(decode_record(&[0]).is_err(), "no key");
        for cut in 1..good.len() {
            // Every strict prefix either fails or decodes to something else; never panics.
            if let Ok((_, kv)) = decode_record(&good[..cut]) {
                assert_ne!(kv, sample());
            }
        }
        assert!(
            decode_record(&[0, 0x0a, 200, 1]).is_err(),
            "length past the end"
        );
        assert!(
            decode_record(&[0, 0x0a, 1, b'k', 0x10]).is_err(),
            "truncated varint"
        );
        assert!(
            decode_record(&[0, 0x0a, 1, b'k', 0x11]).is_err(),
            "wrong wire type"
        );
        assert!(
            decode_record(&[0, 0x0a, 1, b'k', 0x38, 1]).is_err(),
            "unknown field"
        );
        assert!(
            decode_record(&[0, 0x0a, 1, b'k', 0x0a, 1, b'k']).is_err(),
            "repeated field"
        );
        let long = [
            0, 0x0a, 1, b'k', 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2,
        ];
        assert!(decode_record(&long).is_err(), "varint overflow");
    }

    #[test]
    fn decoder_survives_pseudo_random_bytes() {
        let mut x: u64 = 42;
        for _ in 0..20_000 {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            let len = (z % 24) as usize;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                buf.push((z >> 56) as u8);
            }
            round_trips_if_accepted(&buf);
        }
        // Mutations of a valid record decode more often; same property.
        let mut good = Vec::new();
        encode_put_record(&sample().as_ref(), &mut good);
        for i in 0..good.len() {
            for b in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut m = good.clone();
                m[i] = b;
                round_trips_if_accepted(&m);
            }
        }
    }

    /// What the kv_record fuzz target checks: no panic, and an accepted record
    /// re-encodes to bytes that decode to the same record.
    fn round_trips_if_accepted(bytes: &[u8]) {
        if let Ok((kind, kv)) = decode_record(bytes) {
            let mut again = vec![kind as u8];
            kv.encode(&mut again);
            assert_eq!(decode_record(&again).unwrap(), (kind, kv));
        }
    }
}
