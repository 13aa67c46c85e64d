//! Hand-rolled protobuf for the watch hot path: an event is encoded once per core and its
//! bytes are copied (not re-encoded) into every matching watcher's WatchResponse.
//!
//! Wire shapes (etcdserverpb / mvccpb field numbers):
//! - `WatchResponse`: 1 header (msg), 2 watch_id (int64), 3 created, 4 canceled,
//!   5 compact_revision, 6 cancel_reason, 7 fragment, 11 events (repeated msg).
//! - `Event`: 1 type (enum, PUT = 0 omitted), 2 kv (msg), 3 prev_kv (msg).
//! - `ResponseHeader`: 1 cluster_id, 2 member_id, 3 revision, 4 raft_term (uint64/int64).

pub const TAG_HEADER: u8 = 1 << 3 | 2;
pub const TAG_WATCH_ID: u8 = 2 << 3;
pub const TAG_FRAGMENT: u8 = 7 << 3;
pub const TAG_EVENTS: u8 = 11 << 3 | 2;

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_uint_field(out: &mut Vec<u8>, field: u8, v: u64) {
    if v != 0 {
        out.push(field << 3);
        put_varint(out, v);
    }
}

fn put_msg_field(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// `ResponseHeader` as a field-1 message, ready to start a WatchResponse.
pub fn header_field(cluster_id: u64, member_id: u64, revision: i64, raft_term: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(40);
    put_uint_field(&mut h, 1, cluster_id);
    put_uint_field(&mut h, 2, member_id);
    put_uint_field(&mut h, 3, revision as u64);
    put_uint_field(&mut h, 4, raft_term);
    let mut out = Vec::with_capacity(h.len() + 2);
    put_msg_field(&mut out, TAG_HEADER, &h);
    out
}

/// One `Event` as a field-11 entry of a WatchResponse. `kv` and `prev_kv` are KeyValue
/// wire bytes (a Revision-tree record minus its flag byte is exactly that).
pub fn event_field(delete: bool, kv: &[u8], prev_kv: Option<&[u8]>) -> Vec<u8> {
    let mut e = Vec::with_capacity(kv.len() + prev_kv.map_or(0, |p| p.len()) + 8);
    if delete {
        e.push(1 << 3);
        e.push(1);
    }
    put_msg_field(&mut e, 2 << 3 | 2, kv);
    if let Some(p) = prev_kv {
        put_msg_field(&mut e, 3 << 3 | 2, p);
    }
    let mut out = Vec::with_capacity(e.len() + 4);
    put_msg_field(&mut out, TAG_EVENTS, &e);
    out
}

/// A WatchResponse carrying `events` (each already a field-11 entry).
pub fn events_response<'a>(
    header: &[u8],
    watch_id: i64,
    fragment: bool,
    events: impl Iterator<Item = &'a [u8]> + Clone,
) -> Vec<u8> {
    let len: usize = events.clone().map(|e| e.len()).sum();
    let mut out = Vec::with_capacity(header.len() + 12 + len);
    out.extend_from_slice(header);
    if watch_id != 0 {
        out.push(TAG_WATCH_ID);
        put_varint(&mut out, watch_id as u64);
    }
    if fragment {
        out.push(TAG_FRAGMENT);
        out.push(1);
    }
    for e in events {
        out.extend_from_slice(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb as pb;
    use crate::pb::mvccpb;
    use prost::Message;

    #[test]
    fn hand_encoded_response_decodes_as_prost_does() {
        let kv = mvccpb::KeyValue {
            key: b"k".to_vec().into(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: b"v".to_vec().into(),
            lease: 0,
        };
        let prev = mvccpb::KeyValue {
            mod_revision: 4,
            ..kv.clone()
        };
        let header = header_field(7, 8, 5, 2);
        let e1 = event_field(false, &kv.encode_to_vec(), Some(&prev.encode_to_vec()));
        let e2 = event_field(true, &kv.encode_to_vec(), None);
        let bytes = events_response(&header, -1, true, [&e1[..], &e2[..]].into_iter());
        let r = pb::WatchResponse::decode(&bytes[..]).unwrap();
        let h = r.header.unwrap();
        assert_eq!(
            (h.cluster_id, h.member_id, h.revision, h.raft_term),
            (7, 8, 5, 2)
        );
        assert_eq!(r.watch_id, -1);
        assert!(r.fragment);
        assert_eq!(r.events.len(), 2);
        assert_eq!(r.events[0].r#type, 0);
        assert_eq!(r.events[0].kv.as_ref(), Some(&kv));
        assert_eq!(r.events[0].prev_kv.as_ref(), Some(&prev));
        assert_eq!(r.events[1].r#type, 1);
        assert_eq!(r.events[1].prev_kv, None);
    }
}
