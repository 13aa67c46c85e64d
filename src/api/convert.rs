use crate::grpc::Status;
use crate::mvcc;
use crate::pb::etcdserverpb as pb;
pub fn encode_raft_request(_op: &mvcc::Op) -> bytes::Bytes { unimplemented!() }
pub fn decode_raft_request(_d: &[u8]) -> Result<mvcc::Op, String> { unimplemented!() }
pub fn range_request(_r: pb::RangeRequest) -> Result<mvcc::RangeRequest, Status> { unimplemented!() }
pub fn put_request(_r: pb::PutRequest) -> mvcc::PutRequest { unimplemented!() }
pub fn delete_range_request(_r: pb::DeleteRangeRequest) -> mvcc::DeleteRangeRequest { unimplemented!() }
pub fn txn_request(_r: pb::TxnRequest) -> Result<mvcc::TxnRequest, Status> { unimplemented!() }
pub fn compaction_request(_r: pb::CompactionRequest) -> mvcc::CompactionRequest { unimplemented!() }
pub fn range_response(_r: mvcc::RangeResponse, _h: pb::ResponseHeader) -> pb::RangeResponse { unimplemented!() }
pub fn put_response(_r: mvcc::PutResponse, _h: pb::ResponseHeader) -> pb::PutResponse { unimplemented!() }
pub fn delete_range_response(_r: mvcc::DeleteRangeResponse, _h: pb::ResponseHeader) -> pb::DeleteRangeResponse { unimplemented!() }
pub fn txn_response(_r: mvcc::TxnResponse, _h: pb::ResponseHeader) -> pb::TxnResponse { unimplemented!() }
