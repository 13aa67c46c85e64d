//! Write-ahead log: `<data-dir>/member/wal/` (to be built).
