//! Key encodings: fixed-width big-endian integers, so RocksDB's byte order is numeric order and a
//! prefix of a key (a user id, a conversation id) selects exactly that owner's records in order.

/// A user's key, or the prefix of every key a user owns: `user_id` (8 bytes).
pub(crate) fn user(user_id: u64) -> [u8; 8] {
    user_id.to_be_bytes()
}

/// A conversation's key: `conversation_id` (8 bytes).
pub(crate) fn conversation(conversation_id: u64) -> [u8; 8] {
    conversation_id.to_be_bytes()
}

/// Two u64s: (user, device-or-seq), (conversation, seq), (conversation, user), (user, conversation).
pub(crate) fn pair(a: u64, b: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&a.to_be_bytes());
    key[8..].copy_from_slice(&b.to_be_bytes());
    key
}

/// A device: (user_id, device_id) as 8 + 4 bytes.
pub(crate) fn device(user_id: u64, device_id: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&user_id.to_be_bytes());
    key[8..].copy_from_slice(&device_id.to_be_bytes());
    key
}

/// An idempotency record: (user_id, device_id, client_msg_id) as 8 + 4 + 16 bytes.
pub(crate) fn idempotency(user_id: u64, device_id: u32, client_msg_id: &[u8; 16]) -> [u8; 28] {
    let mut key = [0u8; 28];
    key[..12].copy_from_slice(&device(user_id, device_id));
    key[12..].copy_from_slice(client_msg_id);
    key
}

/// The second half of a 16-byte pair key.
pub(crate) fn pair_second(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The first half of a 16-byte pair key.
pub(crate) fn pair_first(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The device id of a 12-byte device key.
pub(crate) fn device_id_of(key: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = key.get(8..12)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// A big-endian u64 value (user ids in `usernames`, conversation ids in `direct`).
pub(crate) fn u64_value(value: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = value.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves byte order is numeric order, which every range scan relies on.
    #[test]
    fn byte_order_is_numeric_order() {
        let samples = [0u64, 1, 255, 256, 65_535, 1 << 32, u64::MAX - 1, u64::MAX];
        for w in samples.windows(2) {
            assert!(pair(7, w[0]) < pair(7, w[1]));
            assert!(pair(w[0], u64::MAX) < pair(w[1], 0));
        }
        assert!(device(1, u32::MAX) < device(2, 0));
    }

    // Proves every encoder round-trips through its decoder.
    #[test]
    fn round_trips() {
        let key = pair(0x0102_0304_0506_0708, 42);
        assert_eq!(pair_first(&key), Some(0x0102_0304_0506_0708));
        assert_eq!(pair_second(&key), Some(42));
        assert_eq!(device_id_of(&device(9, 77)), Some(77));
        assert_eq!(u64_value(&user(123)), Some(123));
        let id = idempotency(1, 2, &[9; 16]);
        assert_eq!(&id[..12], &device(1, 2));
        assert_eq!(&id[12..], &[9; 16]);
        assert_eq!(pair_second(&[1, 2, 3]), None);
    }
}
