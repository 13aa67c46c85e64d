//! `--namespace`: every key a client names through the proxy lives under a prefix in the
//! cluster, as etcd's proxy does with clientv3's namespace wrappers (KV, Watch, Lease; Lock
//! and Election are forwarded untouched there too). Requests get the prefix, responses lose
//! it; a range to the end of the key space (`range_end` "\0") ends at the prefix's end.
//!
//! Runs on: every proxy core (decode, rewrite, encode: only when a namespace is set).

use crate::grpc::status::{Code, Status};
use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb::KeyValue;
use bytes::Bytes;
use prost::Message;

pub struct Namespace {
    prefix: Vec<u8>,
}

fn bad(e: prost::DecodeError) -> Status {
    Status::new(
        Code::Internal,
        format!("grpc: error unmarshalling request: {e}"),
    )
}

fn encode<M: Message>(m: &M) -> Bytes {
    m.encode_to_vec().into()
}

impl Namespace {
    pub fn new(prefix: &str) -> Option<Namespace> {
        (!prefix.is_empty()).then(|| Namespace {
            prefix: prefix.as_bytes().to_vec(),
        })
    }

    pub fn key(&self, key: &[u8]) -> Bytes {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key);
        k.into()
    }

    /// A request range's end in the cluster.
    pub fn end(&self, end: &[u8]) -> Bytes {
        if end == [0] {
            let mut e = self.prefix.clone();
            while let Some(last) = e.last_mut() {
                if *last < 0xff {
                    *last += 1;
                    return e.into();
                }
                e.pop();
            }
            return Bytes::from_static(&[0]);
        }
        if end.is_empty() {
            return Bytes::new();
        }
        self.key(end)
    }

    /// A key from the cluster as the client knows it.
    pub fn strip(&self, key: &mut Bytes) {
        if key.starts_with(&self.prefix) {
            *key = key.slice(self.prefix.len()..);
        }
    }

    fn strip_kv(&self, kv: &mut KeyValue) {
        self.strip(&mut kv.key);
    }

    fn range(&self, r: &mut pb::RangeRequest) {
        r.key = self.key(&r.key);
        r.range_end = self.end(&r.range_end);
    }

    fn delete(&self, r: &mut pb::DeleteRangeRequest) {
        r.key = self.key(&r.key);
        r.range_end = self.end(&r.range_end);
    }

    fn txn(&self, t: &mut pb::TxnRequest) {
        for c in &mut t.compare {
            c.key = self.key(&c.key);
            c.range_end = self.end(&c.range_end);
        }
        for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
            use pb::request_op::Request as R;
            match &mut op.request {
                Some(R::RequestRange(r)) => self.range(r),
                Some(R::RequestPut(p)) => p.key = self.key(&p.key),
                Some(R::RequestDeleteRange(d)) => self.delete(d),
                Some(R::RequestTxn(t)) => self.txn(t),
                None => {}
            }
        }
    }

    fn txn_response(&self, t: &mut pb::TxnResponse) {
        for op in &mut t.responses {
            use pb::response_op::Response as R;
            match &mut op.response {
                Some(R::ResponseRange(r)) => r.kvs.iter_mut().for_each(|kv| self.strip_kv(kv)),
                Some(R::ResponsePut(p)) => p.prev_kv.iter_mut().for_each(|kv| self.strip_kv(kv)),
                Some(R::ResponseDeleteRange(d)) => {
                    d.prev_kvs.iter_mut().for_each(|kv| self.strip_kv(kv))
                }
                Some(R::ResponseTxn(t)) => self.txn_response(t),
                None => {}
            }
        }
    }

    /// A request message of `path` with its keys moved under the prefix.
    pub fn request(&self, path: &str, body: Bytes) -> Result<Bytes, Status> {
        Ok(match path {
            "/etcdserverpb.KV/Range" => {
                let mut r = pb::RangeRequest::decode(body).map_err(bad)?;
                self.range(&mut r);
                encode(&r)
            }
            "/etcdserverpb.KV/Put" => {
                let mut r = pb::PutRequest::decode(body).map_err(bad)?;
                r.key = self.key(&r.key);
                encode(&r)
            }
            "/etcdserverpb.KV/DeleteRange" => {
                let mut r = pb::DeleteRangeRequest::decode(body).map_err(bad)?;
                self.delete(&mut r);
                encode(&r)
            }
            "/etcdserverpb.KV/Txn" => {
                let mut r = pb::TxnRequest::decode(body).map_err(bad)?;
                self.txn(&mut r);
                encode(&r)
            }
            _ => body,
        })
    }

    /// A response message of `path` with the prefix taken off its keys.
    pub fn response(&self, path: &str, body: Bytes) -> Result<Bytes, Status> {
        let internal = |e: prost::DecodeError| Status::new(Code::Internal, e.to_string());
        Ok(match path {
            "/etcdserverpb.KV/Range" => {
                let mut r = pb::RangeResponse::decode(body).map_err(internal)?;
                r.kvs.iter_mut().for_each(|kv| self.strip_kv(kv));
                encode(&r)
            }
            "/etcdserverpb.KV/Put" => {
                let mut r = pb::PutResponse::decode(body).map_err(internal)?;
                r.prev_kv.iter_mut().for_each(|kv| self.strip_kv(kv));
                encode(&r)
            }
            "/etcdserverpb.KV/DeleteRange" => {
                let mut r = pb::DeleteRangeResponse::decode(body).map_err(internal)?;
                r.prev_kvs.iter_mut().for_each(|kv| self.strip_kv(kv));
                encode(&r)
            }
            "/etcdserverpb.KV/Txn" => {
                let mut r = pb::TxnResponse::decode(body).map_err(internal)?;
                self.txn_response(&mut r);
                encode(&r)
            }
            "/etcdserverpb.Lease/LeaseTimeToLive" => {
                let mut r = pb::LeaseTimeToLiveResponse::decode(body).map_err(internal)?;
                r.keys.retain(|k| k.starts_with(&self.prefix));
                r.keys.iter_mut().for_each(|k| self.strip(k));
                encode(&r)
            }
            _ => body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_stay_inside_the_prefix() {
        let ns = Namespace::new("app/").unwrap();
        assert_eq!(ns.key(b"a"), &b"app/a"[..]);
        assert_eq!(ns.end(b"\0"), &b"app0"[..]);
        assert_eq!(ns.end(b""), &b""[..]);
        assert_eq!(ns.end(b"b"), &b"app/b"[..]);
        let ns = Namespace::new("\u{7f}").unwrap();
        assert_eq!(ns.end(b"\0"), &[0x80][..]);
        assert!(Namespace::new("").is_none());
        let mut k = Bytes::from_static(b"app/x");
        Namespace::new("app/").unwrap().strip(&mut k);
        assert_eq!(k, &b"x"[..]);
    }

    #[test]
    fn txn_requests_and_responses_are_rewritten_all_the_way_down() {
        let ns = Namespace::new("p/").unwrap();
        let inner = pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: Bytes::from_static(b"k"),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let t = pb::TxnRequest {
            compare: vec![pb::Compare {
                key: Bytes::from_static(b"c"),
                ..Default::default()
            }],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestTxn(inner)),
            }],
            ..Default::default()
        };
        let out = ns.request("/etcdserverpb.KV/Txn", encode(&t)).unwrap();
        let t = pb::TxnRequest::decode(out).unwrap();
        assert_eq!(t.compare[0].key, &b"p/c"[..]);
        let Some(pb::request_op::Request::RequestTxn(inner)) = &t.failure[0].request else {
            panic!("nested txn lost")
        };
        let Some(pb::request_op::Request::RequestPut(p)) = &inner.success[0].request else {
            panic!("nested put lost")
        };
        assert_eq!(p.key, &b"p/k"[..]);
    }
}
