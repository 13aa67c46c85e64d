//! CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), slicing by 8: the checksum of
//! etcd's WAL records (chained, as Go's `crc32.Update`) and the hash `etcdctl snapshot
//! status` prints over a bbolt file. No crate here provides it (crc32fast is IEEE).
//!
//! Runs on: anywhere (pure).

/// A running CRC-32C.
#[derive(Clone, Copy)]
pub struct Crc32c(u32);

const CRC32C_TABLES: [[u32; 256]; 8] = crc32c_tables();

const fn crc32c_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

impl Crc32c {
    pub fn new() -> Crc32c {
        Crc32c(!0)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        let t = &CRC32C_TABLES;
        let mut c = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for w in &mut chunks {
            let lo = c ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            c = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][w[4] as usize]
                ^ t[2][w[5] as usize]
                ^ t[1][w[6] as usize]
                ^ t[0][w[7] as usize];
        }
        for &b in chunks.remainder() {
            c = (c >> 8) ^ t[0][((c ^ u32::from(b)) & 0xff) as usize];
        }
        self.0 = c;
    }

    pub fn sum(self) -> u32 {
        !self.0
    }
}

impl Default for Crc32c {
    fn default() -> Crc32c {
        Crc32c::new()
    }
}

/// Continues the finished CRC-32C `crc` over `data` (Go's `crc32.Update(crc, castagnoli,
/// data)`).
pub fn update(crc: u32, data: &[u8]) -> u32 {
    let mut c = Crc32c(!crc);
    c.update(data);
    c.sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_values() {
        assert_eq!(super::update(0, b"123456789"), 0xE306_9283);
        let whole = super::update(0, b"hello world, a longer input than eight bytes");
        assert_eq!(
            super::update(
                super::update(0, b"hello world, a lo"),
                b"nger input than eight bytes"
            ),
            whole
        );
    }
}
