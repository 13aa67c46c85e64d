#![no_main]
// Any bytes as a WAL segment: the decoder returns records or an error, never panics
// and never allocates beyond the input's size.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = keel::wal::decode_segment_bytes(data);
});
