//! What a [`Session`](crate::Session) keeps across restarts of the app: the session token, the sync
//! cursor and the outbox of sends the server has not confirmed.
//!
//! An app picks where it lives by giving the session a [`Storage`]: [`MemoryStorage`] keeps it for
//! the life of the process (tests, bots), [`FileStorage`] in one file, and a mobile app can put it
//! in its own database by implementing the trait. The session calls the trait from its background
//! task, never while holding a lock of its own, and treats an error as fatal to the session: an
//! outbox that cannot be written must not be acknowledged to the app.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tern_protocol::types::{ClientMsgId, ConversationId, MediaId, Token};

/// The authenticated identity a session resumes with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// The user.
    pub user_id: u64,
    /// This device.
    pub device_id: u32,
    /// The user's name.
    pub username: String,
    /// The device's session token (a secret: whoever has it is this device).
    pub token: Token,
}

/// A send the server has not confirmed yet. It is retried with the same `client_msg_id`, which the
/// server uses to store it at most once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSend {
    /// The idempotency key, unique per device.
    pub client_msg_id: ClientMsgId,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The text.
    pub body: String,
    /// Attached media.
    pub attachments: Vec<MediaId>,
}

/// Everything a [`Storage`] holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    /// The session to resume, if logged in.
    pub session: Option<StoredSession>,
    /// The `user_seq` of the last update handed to the app: the next sync starts after it.
    pub cursor: u64,
    /// Unconfirmed sends, oldest first.
    pub outbox: Vec<PendingSend>,
    /// The device's end-to-end encryption state ([`Crypto`](crate::Crypto)): its Olm account,
    /// Olm and Megolm sessions and the devices it knows, serialised. It holds private keys: the
    /// storage must be as private as the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crypto: Option<String>,
}

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
#[error("client storage at {place}: {source}")]
pub struct StorageError {
    place: String,
    #[source]
    source: io::Error,
}

impl StorageError {
    /// An error at `place` (a path, a table name) caused by `source`.
    pub fn new(place: impl Into<String>, source: io::Error) -> StorageError {
        StorageError {
            place: place.into(),
            source,
        }
    }
}

/// Where a session keeps its state. Every method must be durable when it returns (as durable as the
/// implementation promises): the session tells the app a send is queued only after `push_outbox`
/// returned, and acknowledges updates to the server only up to the cursor `save_cursor` recorded
/// (the updates the app took; see [`Session::next_event`](crate::Session::next_event)).
pub trait Storage: Send + Sync + 'static {
    /// Everything stored; the default state when nothing is.
    fn load(&self) -> Result<StoredState, StorageError>;
    /// Replaces the session (`None` after a logout or a revoked token).
    fn save_session(&self, session: Option<&StoredSession>) -> Result<(), StorageError>;
    /// Records the cursor: the `user_seq` of the last update the app took.
    fn save_cursor(&self, cursor: u64) -> Result<(), StorageError>;
    /// Appends a send to the outbox.
    fn push_outbox(&self, send: &PendingSend) -> Result<(), StorageError>;
    /// Removes a send from the outbox (confirmed, or refused for good).
    fn remove_outbox(&self, client_msg_id: &ClientMsgId) -> Result<(), StorageError>;
    /// Replaces the end-to-end encryption state. A storage that keeps no such state (the default)
    /// refuses, and [`Crypto`](crate::Crypto) cannot be used with it.
    fn save_crypto(&self, crypto: &str) -> Result<(), StorageError> {
        let _ = crypto;
        Err(StorageError::new(
            "crypto state",
            io::Error::new(
                io::ErrorKind::Unsupported,
                "this storage keeps no crypto state",
            ),
        ))
    }
}

/// State kept in memory only: gone when the process ends.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    state: Mutex<StoredState>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// A store that starts with `state`.
    pub fn with_state(state: StoredState) -> MemoryStorage {
        MemoryStorage {
            state: Mutex::new(state),
        }
    }

    fn update<T>(&self, change: impl FnOnce(&mut StoredState) -> T) -> T {
        change(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Storage for MemoryStorage {
    fn load(&self) -> Result<StoredState, StorageError> {
        Ok(self.update(|state| state.clone()))
    }

    fn save_session(&self, session: Option<&StoredSession>) -> Result<(), StorageError> {
        self.update(|state| state.session = session.cloned());
        Ok(())
    }

    fn save_cursor(&self, cursor: u64) -> Result<(), StorageError> {
        self.update(|state| state.cursor = cursor);
        Ok(())
    }

    fn push_outbox(&self, send: &PendingSend) -> Result<(), StorageError> {
        self.update(|state| state.outbox.push(send.clone()));
        Ok(())
    }

    fn remove_outbox(&self, client_msg_id: &ClientMsgId) -> Result<(), StorageError> {
        self.update(|state| state.outbox.retain(|s| &s.client_msg_id != client_msg_id));
        Ok(())
    }

    fn save_crypto(&self, crypto: &str) -> Result<(), StorageError> {
        self.update(|state| state.crypto = Some(crypto.to_owned()));
        Ok(())
    }
}

/// State in one JSON file, readable and writable by its owner only (mode 0600).
///
/// Every change rewrites the file: it writes a temporary file beside it, syncs it, renames it over
/// the old one and syncs the directory, so after a crash the file holds either the state before
/// the change or after it, never a mix. That suits a chat app's few kilobytes of state; an app with
/// a large outbox or many updates a second should store in its own database instead.
#[derive(Debug)]
pub struct FileStorage {
    path: PathBuf,
    state: Mutex<StoredState>,
}

impl FileStorage {
    /// Opens (or, when missing, starts) the state file at `path`. Its directory must exist.
    pub fn open(path: impl Into<PathBuf>) -> Result<FileStorage, StorageError> {
        let path = path.into();
        let error = |e| StorageError::new(path.display().to_string(), e);
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| error(io::Error::new(io::ErrorKind::InvalidData, e)))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => StoredState::default(),
            Err(e) => return Err(error(e)),
        };
        Ok(FileStorage {
            path,
            state: Mutex::new(state),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn update(&self, change: impl FnOnce(&mut StoredState)) -> Result<(), StorageError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = state.clone();
        change(&mut next);
        write_atomically(&self.path, &next)
            .map_err(|e| StorageError::new(self.path.display().to_string(), e))?;
        *state = next;
        Ok(())
    }
}

fn write_atomically(path: &Path, state: &StoredState) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(".tmp");
    let temp = PathBuf::from(temp_name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::File::open(dir)?.sync_all()
}

impl Storage for FileStorage {
    fn load(&self) -> Result<StoredState, StorageError> {
        Ok(self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone())
    }

    fn save_session(&self, session: Option<&StoredSession>) -> Result<(), StorageError> {
        self.update(|state| state.session = session.cloned())
    }

    fn save_cursor(&self, cursor: u64) -> Result<(), StorageError> {
        self.update(|state| state.cursor = cursor)
    }

    fn push_outbox(&self, send: &PendingSend) -> Result<(), StorageError> {
        self.update(|state| state.outbox.push(send.clone()))
    }

    fn remove_outbox(&self, client_msg_id: &ClientMsgId) -> Result<(), StorageError> {
        self.update(|state| state.outbox.retain(|s| &s.client_msg_id != client_msg_id))
    }

    fn save_crypto(&self, crypto: &str) -> Result<(), StorageError> {
        self.update(|state| state.crypto = Some(crypto.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(storage: &dyn Storage) {
        assert_eq!(storage.load().unwrap(), StoredState::default());
        let session = StoredSession {
            user_id: 7,
            device_id: 2,
            username: "alice".into(),
            token: [9; 32],
        };
        storage.save_session(Some(&session)).unwrap();
        storage.save_cursor(41).unwrap();
        for n in 1..=3u8 {
            let send = PendingSend {
                client_msg_id: [n; 16],
                conversation_id: 5,
                body: format!("m{n}"),
                attachments: vec![u64::from(n)],
            };
            storage.push_outbox(&send).unwrap();
        }
        storage.remove_outbox(&[2; 16]).unwrap();
        let state = storage.load().unwrap();
        assert_eq!(state.session, Some(session));
        assert_eq!(state.cursor, 41);
        let bodies: Vec<_> = state.outbox.iter().map(|s| s.body.as_str()).collect();
        assert_eq!(bodies, ["m1", "m3"]);
    }

    // Proves the memory store keeps what it is given, and drops what is removed.
    #[test]
    fn memory_storage() {
        exercise(&MemoryStorage::new());
    }

    // Proves the file store keeps the same, that a second open reads it back, that the file is the
    // owner's only, and that no temporary file is left behind.
    #[test]
    fn file_storage_survives_reopening() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        exercise(&FileStorage::open(&path).unwrap());
        let reopened = FileStorage::open(&path).unwrap();
        let state = reopened.load().unwrap();
        assert_eq!((state.cursor, state.outbox.len()), (41, 2));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    // Proves a damaged file is an error, not an empty state that would lose the outbox.
    #[test]
    fn damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"{ not json").unwrap();
        assert!(FileStorage::open(&path).is_err());
    }
}
