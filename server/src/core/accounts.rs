//! Accounts: registration, devices and their tokens, resume, revocation, user lookup.
//!
//! Password hashing is PBKDF2-HMAC-SHA256 (ring) with a 16-byte random salt and the configured
//! iteration count. The hash functions here are pure and CPU-heavy: the runtime runs them on its
//! blocking pool, never on a core thread. Tokens are 32 random bytes made by the runtime; only
//! their SHA-256 is stored, so a copy of the database does not let anyone resume a session.

use super::{HashMap, HashSet};
use std::num::NonZeroU32;

use ring::{digest, pbkdf2};
use tern_protocol::frames::{Authenticated, Devices, Ok as OkFrame, UserInfo};
use tern_protocol::types::DeviceInfo;
use tern_protocol::ErrorCode;

use super::mail::{AdoptAuth, ConnRef, Mail};
use super::{ConnId, Output, Shard};
use crate::store::records::{DeviceRecord, UserRecord};
use crate::store::StoreError;

/// Shortest username, in characters.
pub(crate) const USERNAME_CHARS_MIN: usize = 3;
/// Shortest password, in bytes.
pub(crate) const PASSWORD_BYTES_MIN: usize = 8;
/// How stale a device's `last_active_at` may get before a `Resume` writes it again.
const DEVICE_ACTIVE_REFRESH_MS: u64 = 60_000;

/// Account bookkeeping of one core.
#[derive(Debug, Default)]
pub(crate) struct AccountState {
    /// Usernames being created in the pending batch (not yet visible in the store).
    names_in_flight: HashSet<String>,
    /// The highest device id handed out per user, so two logins in one batch get distinct ids.
    device_ids: HashMap<u64, u32>,
}

/// Checks a username against the spec's rules: 3 to 32 of `a-z 0-9 _ . -`.
pub(crate) fn validate_username(username: &str) -> Result<(), &'static str> {
    let valid_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-');
    if username.len() < USERNAME_CHARS_MIN {
        return Err("username must have at least 3 characters");
    }
    if !username.chars().all(valid_char) {
        return Err("username may only contain a-z, 0-9, '_', '.' and '-'");
    }
    Ok(())
}

/// Checks a password's length (the decoder already enforced the maximum).
pub(crate) fn validate_password(password: &str) -> Result<(), &'static str> {
    if password.len() < PASSWORD_BYTES_MIN {
        return Err("password must have at least 8 bytes");
    }
    Ok(())
}

/// Derives a password hash. CPU-heavy: call on the blocking pool.
pub(crate) fn hash_password(password: &str, salt: &[u8; 16], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

/// Checks a password against a stored hash in constant time. CPU-heavy: call on the blocking pool.
pub(crate) fn verify_password(password: &str, user: &UserRecord) -> bool {
    let Some(iterations) = NonZeroU32::new(user.password_iterations) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &user.password_salt,
        password.as_bytes(),
        &user.password_hash,
    )
    .is_ok()
}

/// The stored form of a token.
pub(crate) fn token_hash(token: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, token).as_ref());
    out
}

impl Shard {
    /// On the username's owner core: creates the account unless the name exists.
    pub(crate) fn handle_create_user(
        &mut self,
        now_ms: u64,
        origin: ConnRef,
        mut user: UserRecord,
        device_name: String,
    ) -> Result<(), StoreError> {
        let taken = self.accounts.names_in_flight.contains(&user.username)
            || self.store.user_id_by_name(&user.username)?.is_some();
        if taken {
            let result = Err(ErrorCode::USERNAME_TAKEN);
            self.mail_now(origin.core, Mail::UserCreated { origin, result });
            return Ok(());
        }
        let user_id = self.next_id(now_ms);
        user.created_at = now_ms;
        self.batch.put_user(user_id, &user)?;
        self.accounts.names_in_flight.insert(user.username.clone());
        let result = Ok((user_id, user.username, device_name));
        self.mail_after_commit(origin.core, Mail::UserCreated { origin, result });
        Ok(())
    }

    /// Called after each commit: names in flight are now in the store.
    pub(crate) fn accounts_committed(&mut self) {
        self.accounts.names_in_flight.clear();
    }

    /// On the user's owner core: finishes authenticating a connection that just migrated here.
    pub(crate) fn adopt(&mut self, now_ms: u64, conn: ConnId, request_id: u32, auth: AdoptAuth) {
        let result = match auth {
            AdoptAuth::NewDevice {
                user_id,
                username,
                device_name,
                token,
                token_hash,
            } => self.create_device(
                now_ms,
                conn,
                request_id,
                user_id,
                username,
                device_name,
                token,
                token_hash,
            ),
            AdoptAuth::Resume {
                user_id,
                device_id,
                token_hash,
            } => self.resume_device(now_ms, conn, request_id, user_id, device_id, token_hash),
        };
        if let Err(e) = result {
            tracing::error!(core = self.core, error = %e, "storage error while authenticating");
            self.reply_error(conn, request_id, ErrorCode::INTERNAL, "storage error");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create_device(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        username: String,
        device_name: String,
        token: [u8; 32],
        token_hash: [u8; 32],
    ) -> Result<(), StoreError> {
        if self.refuse_connection_over_limit(conn, request_id, user_id) {
            return Ok(());
        }
        let devices = self.store.devices(user_id)?;
        let active = devices.iter().filter(|(_, d)| !d.revoked).count();
        let max = self.config.devices_per_user_max as usize;
        if active >= max {
            let message = format!("this account already has {max} devices; revoke one first");
            self.reply_error(conn, request_id, ErrorCode::TOO_MANY_DEVICES, message);
            return Ok(());
        }
        let stored_max = devices.iter().map(|(id, _)| *id).max().unwrap_or(0);
        let last = self
            .accounts
            .device_ids
            .entry(user_id)
            .or_insert(stored_max);
        *last = (*last).max(stored_max) + 1;
        let device_id = *last;
        let record = DeviceRecord {
            name: device_name,
            created_at: now_ms,
            last_active_at: now_ms,
            token_hash,
            cursor: 0,
            revoked: false,
            push: None,
        };
        self.batch.put_device(user_id, device_id, &record)?;
        self.batch.put_session(&token_hash, user_id, device_id);
        self.add_session(now_ms, conn, user_id, device_id);
        let reply = Authenticated {
            user_id,
            device_id,
            username,
            token: Some(token),
        };
        self.reply_after_commit(conn, request_id, reply);
        Ok(())
    }

    fn resume_device(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        device_id: u32,
        token_hash: [u8; 32],
    ) -> Result<(), StoreError> {
        let device = self.store.device(user_id, device_id)?;
        let user = self.store.user(user_id)?;
        let (Some(mut device), Some(user)) = (device, user) else {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::BAD_CREDENTIALS,
                "unknown token",
            );
            return Ok(());
        };
        if self.refuse_connection_over_limit(conn, request_id, user_id) {
            return Ok(());
        }
        if device.revoked || device.token_hash != token_hash {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::BAD_CREDENTIALS,
                "this token was revoked",
            );
            return Ok(());
        }
        // Reconnecting often (a flaky network, a restart's reconnect storm) rewrites the record at
        // most once a minute.
        if now_ms.saturating_sub(device.last_active_at) >= DEVICE_ACTIVE_REFRESH_MS {
            device.last_active_at = now_ms;
            self.batch.put_device(user_id, device_id, &device)?;
        }
        self.add_session(now_ms, conn, user_id, device_id);
        let reply = Authenticated {
            user_id,
            device_id,
            username: user.username,
            token: None,
        };
        self.reply_after_commit(conn, request_id, reply);
        Ok(())
    }

    /// Refuses an authentication that would give the user more connections than allowed.
    fn refuse_connection_over_limit(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
    ) -> bool {
        let max = self.config.connections_per_user_max;
        if self.online.get(&user_id).map_or(0, Vec::len) < max {
            return false;
        }
        let message = format!("this user already has {max} connections");
        self.reply_error(conn, request_id, ErrorCode::LIMIT_EXCEEDED, message);
        true
    }

    pub(crate) fn handle_list_devices(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        current: u32,
    ) -> Result<(), StoreError> {
        let online: HashSet<u32> = self
            .online
            .get(&user_id)
            .into_iter()
            .flatten()
            .filter_map(|c| self.sessions.get(c).map(|s| s.device_id))
            .collect();
        let devices = self
            .store
            .devices(user_id)?
            .into_iter()
            .filter(|(_, d)| !d.revoked)
            .map(|(device_id, d)| DeviceInfo {
                device_id,
                name: d.name,
                created_at: d.created_at,
                last_active_at: d.last_active_at,
                online: online.contains(&device_id),
                current: device_id == current,
            })
            .collect();
        self.reply(conn, request_id, Devices { devices });
        Ok(())
    }

    pub(crate) fn handle_revoke(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        device_id: u32,
    ) -> Result<(), StoreError> {
        let exists = self
            .store
            .device(user_id, device_id)?
            .is_some_and(|d| !d.revoked);
        if !exists {
            self.reply_error(conn, request_id, ErrorCode::NOT_FOUND, "no such device");
            return Ok(());
        }
        // The reply goes first: revoking the caller's own device also closes this connection.
        self.reply_after_commit(conn, request_id, OkFrame {});
        self.revoke(user_id, device_id)?;
        Ok(())
    }

    pub(crate) fn handle_logout(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        device_id: u32,
    ) -> Result<(), StoreError> {
        self.reply_after_commit(conn, request_id, OkFrame {});
        self.revoke(user_id, device_id)?;
        Ok(())
    }

    /// Revokes a device: its token stops working and, once that is durable, its connections close.
    fn revoke(&mut self, user_id: u64, device_id: u32) -> Result<bool, StoreError> {
        let Some(mut device) = self.store.device(user_id, device_id)? else {
            return Ok(false);
        };
        if device.revoked {
            return Ok(false);
        }
        device.revoked = true;
        self.batch.put_device(user_id, device_id, &device)?;
        self.keys_device_revoked(user_id, device_id)?;
        self.batch.delete_session(&device.token_hash);
        let conns: Vec<ConnId> = self
            .online
            .get(&user_id)
            .into_iter()
            .flatten()
            .copied()
            .filter(|c| {
                self.sessions
                    .get(c)
                    .is_some_and(|s| s.device_id == device_id)
            })
            .collect();
        for conn in conns {
            self.close_after_commit(
                conn,
                ErrorCode::DEVICE_REVOKED,
                "this device was signed out",
            );
        }
        Ok(true)
    }

    fn close_after_commit(&mut self, conn: ConnId, code: ErrorCode, message: &str) {
        self.after_commit_output(Output::Close {
            conn,
            code,
            message: message.to_owned(),
        });
    }

    pub(crate) fn handle_lookup(
        &mut self,
        conn: ConnId,
        request_id: u32,
        username: &str,
    ) -> Result<(), StoreError> {
        match self.store.user_id_by_name(username)? {
            Some(user_id) => self.reply(
                conn,
                request_id,
                UserInfo {
                    user_id,
                    username: username.to_owned(),
                },
            ),
            None => self.reply_error(conn, request_id, ErrorCode::NOT_FOUND, "no such user"),
        }
        Ok(())
    }

    /// `GetUsers`: the names of the users that exist among `user_ids`, in the order asked. User
    /// records never change once created, so any core may read them.
    pub(crate) fn handle_get_users(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_ids: &[u64],
    ) -> Result<(), StoreError> {
        let mut users = Vec::with_capacity(user_ids.len());
        for &user_id in user_ids {
            if let Some(record) = self.store.user(user_id)? {
                users.push(UserInfo {
                    user_id,
                    username: record.username,
                });
            }
        }
        self.reply(conn, request_id, tern_protocol::frames::Users { users });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the username rules of the spec: length and alphabet.
    #[test]
    fn usernames() {
        assert!(validate_username("alice").is_ok());
        assert!(validate_username("a_b.c-9").is_ok());
        assert!(validate_username("al").is_err());
        assert!(validate_username("Alice").is_err());
        assert!(validate_username("al ice").is_err());
        assert!(validate_username("ålice").is_err());
    }

    // Proves a derived hash verifies with the right password only.
    #[test]
    fn password_hash_verifies() {
        let salt = [7u8; 16];
        let user = UserRecord {
            username: "alice".into(),
            created_at: 0,
            password_salt: salt,
            password_iterations: 1000,
            password_hash: hash_password("correct horse", &salt, 1000),
            hide_last_seen: false,
        };
        assert!(verify_password("correct horse", &user));
        assert!(!verify_password("correct horsf", &user));
        assert_ne!(token_hash(&[1; 32]), token_hash(&[2; 32]));
    }
}
