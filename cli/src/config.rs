//! The config file: the server's address, the stored session (user, device, token) and the names of
//! users this client has looked up.
//!
//! It lives at `$TERN_CONFIG`, else `$XDG_CONFIG_HOME/tern/config.toml`, else
//! `~/.config/tern/config.toml`. The token in it is a password, so the file is created with mode
//! 0600 in a directory created with mode 0700, always written whole to a temporary file that is
//! synced and renamed over the old one (a crash leaves the old file or the new one, never half of
//! either), and refused when it is readable by the group or others.
//!
//! The names matter because the protocol names users by id everywhere but `LookupUser`: the client
//! remembers every name it has resolved so it can show names instead of numbers.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tern_protocol::types::{DeviceId, Token, UserId};

use crate::error::CliError;
use crate::net::temp_path;

/// The server address used when neither the config file nor `--server` names one.
pub(crate) const SERVER_DEFAULT: &str = "127.0.0.1:7400";

/// The file's mode: read and write for the owner only.
const FILE_MODE: u32 = 0o600;

/// The mode of a directory this client creates for the file.
const DIR_MODE: u32 = 0o700;

/// The most names remembered; the oldest are not dropped, new ones are just not added past it.
const CONTACTS_MAX: usize = 10_000;

/// The config file's content.
///
/// Fields this version does not know are ignored, so a file written by a newer `tern` still loads
/// (and loses them when this version writes it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Config {
    /// The server's address, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<String>,
    /// The name this client gives its devices at `register` and `login`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) device_name: Option<String>,
    /// The stored session, when logged in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) session: Option<Session>,
    /// Usernames by user id, as learned from the server.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) users: BTreeMap<String, UserId>,
}

/// A logged-in device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    /// The server the device belongs to.
    pub(crate) server: String,
    /// The user's name.
    pub(crate) username: String,
    /// The user's id.
    pub(crate) user_id: UserId,
    /// The device's id.
    pub(crate) device_id: DeviceId,
    /// The device's resume token, hex.
    pub(crate) token: String,
    /// The highest `user_seq` `tern sync` has printed and acknowledged.
    #[serde(default)]
    pub(crate) cursor: u64,
}

impl Session {
    /// The token as bytes.
    pub(crate) fn token(&self, path: &Path) -> Result<Token, CliError> {
        decode_hex(&self.token).ok_or_else(|| CliError::Config {
            path: path.to_owned(),
            reason: "session.token is not 64 hex digits".to_owned(),
        })
    }
}

impl Config {
    /// The user id of a name, when known.
    pub(crate) fn user_id(&self, username: &str) -> Option<UserId> {
        self.users.get(username).copied()
    }

    /// Remembers a user's name.
    pub(crate) fn remember(&mut self, username: &str, user_id: UserId) {
        if self.users.len() < CONTACTS_MAX || self.users.contains_key(username) {
            self.users.insert(username.to_owned(), user_id);
        }
    }

    /// The name of a user id, when known.
    pub(crate) fn username(&self, user_id: UserId) -> Option<&str> {
        self.users
            .iter()
            .find(|(_, id)| **id == user_id)
            .map(|(name, _)| name.as_str())
    }
}

/// Where the config file is, from the environment.
pub(crate) fn default_path() -> Result<PathBuf, CliError> {
    if let Some(path) = std::env::var_os("TERN_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(dir).join("tern").join("config.toml"));
    }
    match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        Some(home) => Ok(PathBuf::from(home)
            .join(".config")
            .join("tern")
            .join("config.toml")),
        None => Err(CliError::Usage(
            "no config file location: set TERN_CONFIG, XDG_CONFIG_HOME or HOME".to_owned(),
        )),
    }
}

/// Reads the config file; a missing file is an empty config. A file readable by the group or
/// others is refused, as it may hold a token.
pub(crate) fn load(path: &Path) -> Result<Config, CliError> {
    let config_error = |reason: String| CliError::Config {
        path: path.to_owned(),
        reason,
    };
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(source) => {
            return Err(CliError::File {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(config_error(format!(
            "is readable by others (mode {mode:04o}) and may hold a token; \
             run `chmod 600 {}` first",
            path.display()
        )));
    }
    let text = fs::read_to_string(path).map_err(|source| CliError::File {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|error| config_error(error.to_string()))
}

/// Writes the config file atomically with mode 0600, creating its directory with mode 0700.
pub(crate) fn save(path: &Path, config: &Config) -> Result<(), CliError> {
    let file_error = |source| CliError::File {
        path: path.to_owned(),
        source,
    };
    let text = toml::to_string(config).map_err(|error| CliError::Config {
        path: path.to_owned(),
        reason: error.to_string(),
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(file_error)?;
    }
    let temp = temp_path(path);
    let _ = fs::remove_file(&temp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&temp)
        .map_err(file_error)?;
    // The mode given to open is masked by the umask; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
        .map_err(file_error)?;
    file.write_all(text.as_bytes()).map_err(file_error)?;
    file.sync_all().map_err(file_error)?;
    drop(file);
    fs::rename(&temp, path).map_err(file_error)?;
    // The rename is durable once the directory is synced.
    if let Ok(dir) = fs::File::open(&dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Lowercase hex of bytes.
pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of exactly `N` from hex.
pub(crate) fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0; N];
    for (i, pair) in text.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hex round-trips and rejects wrong lengths and digits.
    #[test]
    fn hex_round_trip() {
        let bytes: [u8; 4] = [0, 0x7f, 0xab, 0xff];
        assert_eq!(encode_hex(&bytes), "007fabff");
        assert_eq!(decode_hex::<4>("007fabff"), Some(bytes));
        assert_eq!(decode_hex::<4>("007fab"), None);
        assert_eq!(decode_hex::<2>("zz00"), None);
    }

    // A saved config reads back the same, with mode 0600, and a group-readable file is refused.
    #[test]
    fn save_load_and_mode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub").join("config.toml");
        let mut config = Config {
            server: Some("127.0.0.1:1".to_owned()),
            ..Config::default()
        };
        config.remember("bob", 7);
        save(&path, &config).expect("save");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().expect("parent"))
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(load(&path).expect("load"), config);
        assert_eq!(config.username(7), Some("bob"));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let error = load(&path).expect_err("group-readable file");
        assert!(error.to_string().contains("readable by others"), "{error}");
    }
}
