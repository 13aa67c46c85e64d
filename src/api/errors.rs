pub fn status_from_mvcc(_e: &crate::mvcc::Error) -> crate::grpc::Status { unimplemented!() }
