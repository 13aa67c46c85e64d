//! Fuzzes the Revision-tree record decoder (`keel::mvcc::decode_record`): it must never
//! panic, and whatever it accepts must re-encode to bytes that decode to the same record.
#![no_main]

use keel::mvcc::decode_record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((kind, kv)) = decode_record(data) {
        let mut again = vec![kind as u8];
        kv.encode(&mut again);
        assert_eq!(decode_record(&again).expect("re-encoded record decodes"), (kind, kv));
    }
});
