#![no_main]
// Any bytes as a db page: validation returns Ok or an error, never panics.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut page = [0u8; keel::mvcc::db::PAGE_BYTES];
    let n = data.len().min(page.len());
    page[..n].copy_from_slice(&data[..n]);
    let _ = keel::mvcc::db::check_page_bytes(&page);
});
