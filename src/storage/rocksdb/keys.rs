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

/// Calls `f` with `join(parts)`, built on the stack when it is short: a lookup on a hot path
/// (a woken /sync makes several) allocates nothing.
pub fn with_joined<R>(parts: &[&[u8]], f: impl FnOnce(&[u8]) -> R) -> R {
    let len = parts.iter().map(|p| p.len() + 1).sum::<usize>().saturating_sub(1);
    let mut buf = [0u8; 256];
    if len > buf.len() {
        return f(&join(parts));
    }
    let mut at = 0;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            buf[at] = SEP;
            at += 1;
        }
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    f(&buf[..at])
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

/// OUTBOX kinds (the byte after the destination).
pub const OUTBOX_PDU: u8 = 0;
pub const OUTBOX_EDU: u8 = 1;

/// `destination 0xFF kind` — the run of one kind of a destination's queue.
pub fn outbox_run(destination: &[u8], kind: u8) -> Vec<u8> {
    let mut key = prefix(destination);
    key.push(kind);
    key
}

/// `destination 0xFF kind seq`.
pub fn outbox_key(destination: &[u8], kind: u8, seq: u64) -> Vec<u8> {
    let mut key = outbox_run(destination, kind);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `destination 0xFF 0xFF`: sorts after every OUTBOX key of `destination` (kinds are < 0xFF)
/// and before the next destination's.
pub fn outbox_after(destination: &[u8]) -> Vec<u8> {
    outbox_run(destination, SEP)
}

/// Splits an OUTBOX key into (destination, kind, seq).
pub fn split_outbox_key(key: &[u8]) -> Option<(&[u8], u8, u64)> {
    let seq = trailing_u64(key)?;
    let rest = key.get(..key.len() - 8)?;
    let (&kind, rest) = rest.split_last()?;
    let (&sep, destination) = rest.split_last()?;
    (sep == SEP).then_some((destination, kind, seq))
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
    fn outbox_keys_split_and_sort_per_destination() {
        let key = outbox_key(b"a.test", OUTBOX_EDU, 9);
        assert_eq!(split_outbox_key(&key), Some((&b"a.test"[..], OUTBOX_EDU, 9)));
        assert!(outbox_key(b"a.test", OUTBOX_PDU, u64::MAX) < outbox_key(b"a.test", OUTBOX_EDU, 0));
        assert!(outbox_key(b"a.test", OUTBOX_EDU, u64::MAX) < outbox_after(b"a.test"));
        // Another destination's keys never fall inside a destination's range.
        let range = outbox_run(b"a.test", OUTBOX_PDU)..outbox_after(b"a.test");
        for other in [&b"a.test0"[..], b"a.tes", b"a.testb", b"b"] {
            for seq in [0, u64::MAX] {
                assert!(!range.contains(&outbox_key(other, OUTBOX_PDU, seq)));
                assert!(!range.contains(&outbox_key(other, OUTBOX_EDU, seq)));
            }
        }
        assert_eq!(split_outbox_key(b"short"), None);
    }

    #[test]
    fn parts_do_not_collide() {
        // "@a" + "b:x" must not equal "@ab" + ":x".
        assert_ne!(join(&[b"@a", b"b:x"]), join(&[b"@ab", b":x"]));
    }

    #[test]
    fn a_key_joined_on_the_stack_is_the_joined_key() {
        let long = vec![b'x'; 300];
        let cases: [&[&[u8]]; 6] = [&[], &[b""], &[b"@a:x"], &[b"@a:x", b"!r:x"], &[b"", b"", b"z"], &[b"@a:x", &long]];
        for parts in cases {
            assert_eq!(with_joined(parts, <[u8]>::to_vec), join(parts));
        }
        // Exactly the stack buffer's length, and one past it.
        for len in [255, 256, 257] {
            let part = vec![b'y'; len - 2];
            let parts: &[&[u8]] = &[b"a", &part];
            assert_eq!(with_joined(parts, <[u8]>::to_vec), join(parts));
        }
    }
}
