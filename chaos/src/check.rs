//! Linearizability checking (to be written).

/// `keel-chaos check HISTORY.jsonl`: 0 linearizable, 1 not, 2 bad input.
pub fn command(_args: &[String]) -> i32 {
    2
}
