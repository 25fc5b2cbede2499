//! Key encodings of the RocksDB backend, in one place (layouts are documented in schema.rs).

pub const SEP: u8 = 0xFF;

/// Joins parts with the separator.
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEP);
        }
        key.extend_from_slice(part);
    }
    key
}

/// `prefix 0xFF` — every key that starts with this belongs to `prefix`.
pub fn prefix(part: &[u8]) -> Vec<u8> {
    let mut key = part.to_vec();
    key.push(SEP);
    key
}

/// `part 0xFF n` with n big-endian.
pub fn with_u64(part: &[u8], n: u64) -> Vec<u8> {
    let mut key = prefix(part);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Reads a trailing big-endian u64.
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_order_is_byte_order() {
        assert!(with_u64(b"!r", 255) < with_u64(b"!r", 256));
        assert!(with_u64(b"!r", 1) < with_u64(b"!r", u64::MAX));
        assert_eq!(trailing_u64(&with_u64(b"!r", 77)), Some(77));
    }

    #[test]
    fn parts_do_not_collide() {
        // "@a" + "b:x" must not equal "@ab" + ":x".
        assert_ne!(join(&[b"@a", b"b:x"]), join(&[b"@ab", b":x"]));
    }
}
