//! Reads and writes of end-to-end encryption's records: which conversations are encrypted, the
//! key directory (identity, fallback and one-time keys), the per-device to-device queues and the
//! key backup. The column families are in the schema table of the store's docs.

use super::records::{decode, DeviceKeysRecord, ToDeviceRecord};
use super::{keys, Batch, Store, StoreError, RANGE_READ_MAX};
use super::{CF_DEVICE_KEYS, CF_ENCRYPTED_CONVS, CF_KEY_BACKUP, CF_ONE_TIME_KEYS, CF_TO_DEVICE};

/// A backup entry: its id and its data.
pub(crate) type BackupRow = ([u8; 32], Vec<u8>);

/// A one-time key row: the key and its signature.
pub(crate) type OneTimeKeyRow = (u64, [u8; 32], [u8; 64]);

/// (user_id, device_id, n): a one-time key or a to-device message of a device.
pub(crate) fn device_item(user_id: u64, device_id: u32, n: u64) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..12].copy_from_slice(&keys::device(user_id, device_id));
    key[12..].copy_from_slice(&n.to_be_bytes());
    key
}

fn device_item_n(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(12..20)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// (user_id, entry_id): a backup entry.
fn backup_key(user_id: u64, entry_id: &[u8; 32]) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..8].copy_from_slice(&keys::user(user_id));
    key[8..].copy_from_slice(entry_id);
    key
}

impl Store {
    /// Whether a conversation was created encrypted.
    pub(crate) fn conversation_encrypted(&self, conversation_id: u64) -> Result<bool, StoreError> {
        Ok(self
            .get(CF_ENCRYPTED_CONVS, &keys::conversation(conversation_id))?
            .is_some())
    }

    /// A device's published identity and fallback key.
    pub(crate) fn device_keys(
        &self,
        user_id: u64,
        device_id: u32,
    ) -> Result<Option<DeviceKeysRecord>, StoreError> {
        self.get_record(CF_DEVICE_KEYS, &keys::device(user_id, device_id))
    }

    /// Every device of a user with published keys, by id.
    pub(crate) fn user_device_keys(
        &self,
        user_id: u64,
    ) -> Result<Vec<(u32, DeviceKeysRecord)>, StoreError> {
        let prefix = keys::user(user_id);
        self.scan(CF_DEVICE_KEYS, &prefix, &prefix, RANGE_READ_MAX)?
            .into_iter()
            .map(|(k, v)| {
                let id = keys::device_id_of(&k)
                    .ok_or_else(|| StoreError::Corrupt("device keys key".into()))?;
                Ok((id, decode::<DeviceKeysRecord>(&v)?))
            })
            .collect()
    }

    /// A device's one-time keys in ascending id, at most `limit`.
    pub(crate) fn one_time_keys(
        &self,
        user_id: u64,
        device_id: u32,
        limit: usize,
    ) -> Result<Vec<OneTimeKeyRow>, StoreError> {
        let prefix = keys::device(user_id, device_id);
        self.scan(CF_ONE_TIME_KEYS, &prefix, &prefix, limit)?
            .into_iter()
            .map(|(k, v)| {
                let corrupt = || StoreError::Corrupt("one-time key".into());
                let id = device_item_n(&k).ok_or_else(corrupt)?;
                let key: [u8; 32] = v
                    .get(..32)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(corrupt)?;
                let signature: [u8; 64] = v
                    .get(32..96)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(corrupt)?;
                Ok((id, key, signature))
            })
            .collect()
    }

    /// The last to-device seq assigned to a device (0: none ever).
    pub(crate) fn to_device_last_seq(
        &self,
        user_id: u64,
        device_id: u32,
    ) -> Result<u64, StoreError> {
        Ok(self
            .get(CF_TO_DEVICE, &device_item(user_id, device_id, 0))?
            .and_then(|v| keys::u64_value(&v))
            .unwrap_or(0))
    }

    /// The seq of a device's oldest queued message (`None`: the queue is empty).
    pub(crate) fn to_device_first_seq(
        &self,
        user_id: u64,
        device_id: u32,
    ) -> Result<Option<u64>, StoreError> {
        let prefix = keys::device(user_id, device_id);
        let rows = self.scan(
            CF_TO_DEVICE,
            &prefix,
            &device_item(user_id, device_id, 1),
            1,
        )?;
        Ok(rows.first().and_then(|(k, _)| device_item_n(k)))
    }

    /// A device's queued messages with seq above `since`, ascending, at most `limit`.
    pub(crate) fn to_device_after(
        &self,
        user_id: u64,
        device_id: u32,
        since: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ToDeviceRecord)>, StoreError> {
        let prefix = keys::device(user_id, device_id);
        let from = device_item(user_id, device_id, since.saturating_add(1).max(1));
        self.scan(CF_TO_DEVICE, &prefix, &from, limit)?
            .into_iter()
            .map(|(k, v)| {
                let seq =
                    device_item_n(&k).ok_or_else(|| StoreError::Corrupt("to-device key".into()))?;
                Ok((seq, decode::<ToDeviceRecord>(&v)?))
            })
            .collect()
    }

    /// A user's backup entries with ids above `after`, ascending, at most `limit`.
    pub(crate) fn backup_entries(
        &self,
        user_id: u64,
        after: &[u8; 32],
        limit: usize,
    ) -> Result<Vec<BackupRow>, StoreError> {
        let prefix = keys::user(user_id);
        let mut from = backup_key(user_id, after).to_vec();
        from.push(0);
        self.scan(CF_KEY_BACKUP, &prefix, &from, limit)?
            .into_iter()
            .map(|(k, v)| {
                let id: [u8; 32] = k
                    .get(8..40)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| StoreError::Corrupt("backup key".into()))?;
                Ok((id, v.to_vec()))
            })
            .collect()
    }

    /// Whether a user has a backup entry with this id.
    pub(crate) fn has_backup_entry(
        &self,
        user_id: u64,
        entry_id: &[u8; 32],
    ) -> Result<bool, StoreError> {
        Ok(self
            .get(CF_KEY_BACKUP, &backup_key(user_id, entry_id))?
            .is_some())
    }

    /// How many backup entries a user has, counting at most `max` (a page at a time).
    pub(crate) fn backup_count(&self, user_id: u64, max: usize) -> Result<usize, StoreError> {
        let prefix = keys::user(user_id);
        let mut from = prefix.to_vec();
        let mut count = 0;
        while count < max {
            let rows = self.scan(CF_KEY_BACKUP, &prefix, &from, RANGE_READ_MAX)?;
            let Some((last, _)) = rows.last() else { break };
            count += rows.len();
            from = last.to_vec();
            from.push(0);
            if rows.len() < RANGE_READ_MAX {
                break;
            }
        }
        Ok(count)
    }
}

impl Batch {
    /// Marks a conversation encrypted, for good.
    pub(crate) fn put_conversation_encrypted(&mut self, conversation_id: u64) {
        self.put(
            CF_ENCRYPTED_CONVS,
            &keys::conversation(conversation_id),
            &[],
        );
    }

    pub(crate) fn put_device_keys(
        &mut self,
        user_id: u64,
        device_id: u32,
        record: &DeviceKeysRecord,
    ) -> Result<(), StoreError> {
        self.put_record(CF_DEVICE_KEYS, &keys::device(user_id, device_id), record)
    }

    pub(crate) fn put_one_time_key(
        &mut self,
        user_id: u64,
        device_id: u32,
        key_id: u64,
        key: &[u8; 32],
        signature: &[u8; 64],
    ) {
        let mut value = [0u8; 96];
        value[..32].copy_from_slice(key);
        value[32..].copy_from_slice(signature);
        self.put(
            CF_ONE_TIME_KEYS,
            &device_item(user_id, device_id, key_id),
            &value,
        );
    }

    pub(crate) fn delete_one_time_key(&mut self, user_id: u64, device_id: u32, key_id: u64) {
        self.delete(CF_ONE_TIME_KEYS, &device_item(user_id, device_id, key_id));
    }

    /// Forgets everything of a revoked device: its keys and its to-device queue.
    pub(crate) fn delete_device_e2e(&mut self, user_id: u64, device_id: u32) {
        self.delete(CF_DEVICE_KEYS, &keys::device(user_id, device_id));
        let from = keys::device(user_id, device_id);
        let to = match device_id.checked_add(1) {
            Some(next) => keys::device(user_id, next).to_vec(),
            None => keys::user(user_id.saturating_add(1)).to_vec(),
        };
        self.delete_range(CF_ONE_TIME_KEYS, &from, &to);
        self.delete_range(CF_TO_DEVICE, &from, &to);
    }

    /// Queues a to-device message and records its seq as the device's last.
    pub(crate) fn put_to_device(
        &mut self,
        user_id: u64,
        device_id: u32,
        seq: u64,
        record: &ToDeviceRecord,
    ) -> Result<(), StoreError> {
        debug_assert!(seq > 0, "to-device seqs start at 1");
        self.put(
            CF_TO_DEVICE,
            &device_item(user_id, device_id, 0),
            &seq.to_be_bytes(),
        );
        self.put_record(CF_TO_DEVICE, &device_item(user_id, device_id, seq), record)
    }

    /// Deletes a device's to-device messages with seq 1 to `up_to`.
    pub(crate) fn delete_to_device_through(&mut self, user_id: u64, device_id: u32, up_to: u64) {
        self.delete_range(
            CF_TO_DEVICE,
            &device_item(user_id, device_id, 1),
            &device_item(user_id, device_id, up_to.saturating_add(1)),
        );
    }

    pub(crate) fn put_backup_entry(&mut self, user_id: u64, entry_id: &[u8; 32], data: &[u8]) {
        self.put(CF_KEY_BACKUP, &backup_key(user_id, entry_id), data);
    }

    /// Deletes every backup entry of a user.
    pub(crate) fn delete_backup(&mut self, user_id: u64) {
        self.delete_range(
            CF_KEY_BACKUP,
            &keys::user(user_id),
            &keys::user(user_id.saturating_add(1)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::SignedKeyRecord;

    // Proves the key directory and the to-device queue read back what was written, in order, per
    // device; that acknowledging deletes a prefix but keeps the last seq; and that revoking a
    // device removes its keys and queue and nothing of its neighbours.
    #[test]
    fn keys_and_queues_per_device() {
        let store = Store::in_memory();
        let mut batch = store.batch();
        let record = DeviceKeysRecord {
            curve25519: [1; 32],
            ed25519: [2; 32],
            signature: [3; 64],
            fallback: Some(SignedKeyRecord {
                key_id: 9,
                key: [4; 32],
                signature: [5; 64],
            }),
            fallback_used: false,
        };
        for device in [1, 2] {
            batch.put_device_keys(7, device, &record).unwrap();
            for key_id in [3, 1, 2] {
                batch.put_one_time_key(7, device, key_id, &[key_id as u8; 32], &[0; 64]);
            }
            for seq in 1..=3 {
                let message = ToDeviceRecord {
                    sender: 8,
                    sender_device: 1,
                    ts: seq,
                    payload: vec![seq as u8],
                };
                batch.put_to_device(7, device, seq, &message).unwrap();
            }
        }
        batch.put_backup_entry(7, &[1; 32], b"one");
        batch.put_backup_entry(7, &[2; 32], b"two");
        batch.put_conversation_encrypted(44);
        store.commit(batch).unwrap();

        assert!(store.conversation_encrypted(44).unwrap());
        assert!(!store.conversation_encrypted(45).unwrap());
        assert_eq!(store.user_device_keys(7).unwrap().len(), 2);
        let ids: Vec<u64> = store
            .one_time_keys(7, 1, 10)
            .unwrap()
            .iter()
            .map(|k| k.0)
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(store.to_device_after(7, 1, 1, 10).unwrap().len(), 2);

        let mut batch = store.batch();
        batch.delete_to_device_through(7, 1, 3);
        batch.delete_device_e2e(7, 2);
        store.commit(batch).unwrap();
        assert!(store.to_device_after(7, 1, 0, 10).unwrap().is_empty());
        assert_eq!(store.to_device_last_seq(7, 1).unwrap(), 3);
        assert_eq!(store.to_device_first_seq(7, 1).unwrap(), None);
        assert_eq!(store.one_time_keys(7, 1, 10).unwrap().len(), 3);
        assert!(store.device_keys(7, 2).unwrap().is_none());
        assert!(store.one_time_keys(7, 2, 10).unwrap().is_empty());
        assert!(store.to_device_after(7, 2, 0, 10).unwrap().is_empty());

        let page = store.backup_entries(7, &[0; 32], 10).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(store.backup_entries(7, &[1; 32], 10).unwrap().len(), 1);
        assert_eq!(store.backup_count(7, 100).unwrap(), 2);
        let mut batch = store.batch();
        batch.delete_backup(7);
        store.commit(batch).unwrap();
        assert_eq!(store.backup_count(7, 100).unwrap(), 0);
    }
}
