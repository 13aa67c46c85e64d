//! `Revision { main, sub }`: etcd's revision. `main` is the store revision a write
//! transaction created; `sub` orders the changes inside that transaction.

/// Bytes of an encoded revision: `main` then `sub`, both big-endian u64, so that the byte
/// order of encoded revisions is their numeric order (B+tree keys compare as bytes).
pub const REVISION_BYTES: usize = 16;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Revision {
        Revision { main, sub }
    }

    pub fn encode(&self) -> [u8; REVISION_BYTES] {
        assert!(
            self.main >= 0 && self.sub >= 0,
            "negative revision {self:?}"
        );
        let mut out = [0u8; REVISION_BYTES];
        out[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        out[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        out
    }

    /// Decodes a B+tree key; `None` if it is not 16 bytes or does not fit an i64.
    pub fn decode(bytes: &[u8]) -> Option<Revision> {
        if bytes.len() != REVISION_BYTES {
            return None;
        }
        let main = u64::from_be_bytes(bytes[..8].try_into().ok()?);
        let sub = u64::from_be_bytes(bytes[8..].try_into().ok()?);
        if main > i64::MAX as u64 || sub > i64::MAX as u64 {
            return None;
        }
        Some(Revision {
            main: main as i64,
            sub: sub as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_orders_like_numbers() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(256, 3),
        ];
        for w in revs.windows(2) {
            assert!(w[0].encode() < w[1].encode());
            assert_eq!(Revision::decode(&w[0].encode()), Some(w[0]));
        }
        assert_eq!(Revision::decode(&[0u8; 15]), None);
        assert_eq!(Revision::decode(&[0xff; 16]), None);
    }
}
