//! Back-off on failed logins, per username and per source address, shared by every core.
//!
//! The failure that reaches a key's threshold locks it for one second, and every further failure
//! locks it for twice as long as the last time, up to five minutes: with a threshold of 5, the
//! fifth failure locks and the sixth attempt is already refused. A login for a locked key is
//! answered `RATE_LIMITED` with the time left, without looking at the password. A success clears
//! the username's record (not the address's). Failed `Resume`s are not counted: a token is 32
//! random bytes, nothing a client can guess. Logins are rare next to messages, so one mutex serves
//! all cores.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;

/// Failed logins for one username that lock it.
pub(crate) const LOGIN_FAILURES_PER_USER_MAX: u32 = 5;
/// Failed logins from one address that lock it.
pub(crate) const LOGIN_FAILURES_PER_ADDRESS_MAX: u32 = 20;
/// The first lockout; each later one doubles.
pub(crate) const LOGIN_LOCKOUT_BASE_MS: u64 = 1_000;
/// The longest lockout.
pub(crate) const LOGIN_LOCKOUT_MAX_MS: u64 = 300_000;
/// Records kept per kind of key; past it, expired ones are dropped (or all, if none expired).
pub(crate) const LOGIN_GUARD_ENTRIES_MAX: usize = 100_000;

#[derive(Debug, Default, Clone, Copy)]
struct Strikes {
    failures: u32,
    locked_until_ms: u64,
}

#[derive(Debug)]
struct Table<K> {
    entries: HashMap<K, Strikes>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table {
            entries: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn locked(&self, key: &K, now_ms: u64) -> Option<u64> {
        let until = self.entries.get(key)?.locked_until_ms;
        (until > now_ms).then(|| until - now_ms)
    }

    fn failed(&mut self, key: K, max: u32, now_ms: u64) {
        if self.entries.len() >= LOGIN_GUARD_ENTRIES_MAX {
            self.entries.retain(|_, s| s.locked_until_ms > now_ms);
            if self.entries.len() >= LOGIN_GUARD_ENTRIES_MAX {
                self.entries.clear();
            }
        }
        let strikes = self.entries.entry(key).or_default();
        strikes.failures = strikes.failures.saturating_add(1);
        if strikes.failures >= max {
            let doublings = (strikes.failures - max).min(20);
            let lockout = (LOGIN_LOCKOUT_BASE_MS << doublings).min(LOGIN_LOCKOUT_MAX_MS);
            strikes.locked_until_ms = now_ms + lockout;
        }
    }
}

/// The shared record of failed logins.
#[derive(Debug, Default)]
pub(crate) struct LoginGuard {
    inner: Mutex<(Table<String>, Table<IpAddr>)>,
}

impl LoginGuard {
    /// `Err(ms)` when the username or the address is locked for `ms` more milliseconds.
    pub(crate) fn check(
        &self,
        username: &str,
        addr: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<(), u32> {
        let Ok(tables) = self.inner.lock() else {
            return Ok(());
        };
        let by_name = tables.0.locked(&username.to_owned(), now_ms);
        let by_addr = addr.and_then(|a| tables.1.locked(&a, now_ms));
        match by_name.max(by_addr) {
            Some(ms) => Err(ms.min(u64::from(u32::MAX)) as u32),
            None => Ok(()),
        }
    }

    /// Records a failed login.
    pub(crate) fn failed(&self, username: &str, addr: Option<IpAddr>, now_ms: u64) {
        let Ok(mut tables) = self.inner.lock() else {
            return;
        };
        tables
            .0
            .failed(username.to_owned(), LOGIN_FAILURES_PER_USER_MAX, now_ms);
        if let Some(addr) = addr {
            tables
                .1
                .failed(addr, LOGIN_FAILURES_PER_ADDRESS_MAX, now_ms);
        }
    }

    /// Records a successful login: the username starts afresh.
    pub(crate) fn succeeded(&self, username: &str) {
        if let Ok(mut tables) = self.inner.lock() {
            tables.0.entries.remove(username);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the threshold, the doubling lockouts, the per-address count and the reset.
    #[test]
    fn backoff_doubles_then_resets() {
        let guard = LoginGuard::default();
        let addr: Option<IpAddr> = Some([127, 0, 0, 1].into());
        for _ in 0..LOGIN_FAILURES_PER_USER_MAX {
            assert_eq!(guard.check("alice", addr, 0), Ok(()));
            guard.failed("alice", addr, 0);
        }
        assert_eq!(
            guard.check("alice", addr, 0),
            Err(1_000),
            "the fifth failure locks"
        );
        guard.failed("alice", addr, 1_000);
        assert_eq!(guard.check("alice", addr, 1_000), Err(2_000));
        assert_eq!(
            guard.check("bob", None, 1_000),
            Ok(()),
            "other users are not locked"
        );
        guard.succeeded("alice");
        assert_eq!(guard.check("alice", None, 1_000), Ok(()));
        for _ in 0..LOGIN_FAILURES_PER_ADDRESS_MAX {
            guard.failed("carol", addr, 5_000);
        }
        assert!(
            guard.check("dave", addr, 5_000).is_err(),
            "a noisy address is locked for every name"
        );
    }
}
