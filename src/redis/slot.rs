//! Redis Cluster hash slots: which of the 16384 slots a key lives in.

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The hash slot of `key` on a Redis Cluster: CRC16 (XMODEM) of the key, or of its hash tag
/// (the text between the first `{` and the next `}`, when not empty), modulo 16384.
///
/// Keys with the same hash tag share a slot, which is what lets one script touch them all.
///
/// ```
/// use tower_rampart::redis::key_slot;
///
/// assert_eq!(key_slot(b"foo"), 12182);
/// assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
/// assert_eq!(key_slot(b"{}foo"), key_slot(b"{}foo")); // an empty tag hashes the whole key
/// ```
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS
}

/// The hash tag of `key`, if it has a non-empty one.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = key[open + 1..].iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis Cluster uses it.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_and_slots_match_redis() {
        // The check value of CRC16/XMODEM, and slots Redis's CLUSTER KEYSLOT gives.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn hash_tags() {
        assert_eq!(key_slot(b"{foo}bar"), key_slot(b"foo"));
        assert_eq!(key_slot(b"x{foo}y{bar}"), key_slot(b"foo"));
        // Empty tag or no closing brace: the whole key.
        assert_eq!(hash_tag(b"{}foo"), None);
        assert_eq!(hash_tag(b"{foo"), None);
        assert_eq!(hash_tag(b"a{b}}"), Some(&b"b"[..]));
        assert_eq!(
            key_slot(b"rampart:rl:{ip:1.2.3.4}:q"),
            key_slot(b"ip:1.2.3.4")
        );
    }
}
