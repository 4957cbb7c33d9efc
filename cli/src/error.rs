//! [`CliError`]: everything a `tern` command can fail with, and the exit code each maps to.
//!
//! Messages are written for the person at the terminal: a server refusal shows the spec's code
//! name and the server's message (`NOT_FOUND: no such user`), and the causes of I/O failures are
//! printed once, after the message, by [`CliError::report`].

use std::error::Error as _;
use std::path::PathBuf;

use tern_client::ClientError;
use tern_protocol::types::MediaId;

/// Exit code for a request the server refused.
pub(crate) const EXIT_SERVER: u8 = 1;
/// Exit code for bad usage (clap uses it too).
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code for a server that cannot be reached or a connection that failed.
pub(crate) const EXIT_CONNECTION: u8 = 3;
/// Exit code for a missing or unusable config file or session.
pub(crate) const EXIT_CONFIG: u8 = 4;
/// Exit code for a local file that cannot be read or written.
pub(crate) const EXIT_FILE: u8 = 5;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The command line or its input is wrong.
    #[error("{0}")]
    Usage(String),

    /// The server could not be reached.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The address tried.
        server: String,
        /// Why.
        source: ClientError,
    },

    /// A user named on the command line does not exist.
    #[error("no user named {username:?} ({})", server_text(source))]
    UnknownUser {
        /// The name.
        username: String,
        /// The server's answer.
        source: ClientError,
    },

    /// A request failed: refused by the server or lost with the connection.
    #[error("{}", server_text(.0))]
    Client(#[from] ClientError),

    /// No session is stored.
    #[error("not logged in: run `tern register NAME` or `tern login NAME` first")]
    NotLoggedIn,

    /// The stored token no longer works.
    #[error(
        "the stored session is no longer valid (BAD_CREDENTIALS): run `tern login NAME` again"
    )]
    SessionExpired,

    /// The config file cannot be used.
    #[error("config file {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A local file cannot be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// The interactive client could not go on (its stored session cannot reach the server).
    #[error("{0}")]
    Interactive(String),

    /// End-to-end encryption failed (a key that cannot be stored, a message that cannot be
    /// encrypted).
    #[error("end-to-end encryption: {0}")]
    Crypto(String),

    /// A download did not match the checksum the server holds.
    #[error("media {media_id}: the downloaded bytes do not match its SHA-256")]
    Corrupt {
        /// The media.
        media_id: MediaId,
    },
}

impl CliError {
    /// The process exit code for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::UnknownUser { .. } => EXIT_SERVER,
            CliError::Client(error) if error.server_code().is_some() => EXIT_SERVER,
            CliError::Connect { .. }
            | CliError::Client(_)
            | CliError::Corrupt { .. }
            | CliError::Interactive(_) => EXIT_CONNECTION,
            CliError::NotLoggedIn | CliError::SessionExpired | CliError::Config { .. } => {
                EXIT_CONFIG
            }
            CliError::File { .. } => EXIT_FILE,
            CliError::Crypto(_) => EXIT_SERVER,
        }
    }

    /// The server's error code name, when the server refused the request.
    pub(crate) fn server_code(&self) -> Option<&'static str> {
        match self {
            CliError::UnknownUser { source, .. }
            | CliError::Client(source)
            | CliError::Connect { source, .. } => source.server_code().map(|code| code.name()),
            CliError::SessionExpired => Some("BAD_CREDENTIALS"),
            _ => None,
        }
    }

    /// The message and its chain of causes, on one line.
    pub(crate) fn report(&self) -> String {
        let mut text = self.to_string();
        // A server's refusal is complete in the message; other failures have I/O causes.
        if self.server_code().is_some() {
            return text;
        }
        let mut source = match self {
            CliError::Client(error) | CliError::Connect { source: error, .. } => error.source(),
            CliError::File { .. } => None,
            other => other.source(),
        };
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }
}

impl From<tern_client::CryptoError> for CliError {
    fn from(error: tern_client::CryptoError) -> CliError {
        match error {
            tern_client::CryptoError::Client(error) => CliError::Client(error),
            other => CliError::Crypto(other.to_string()),
        }
    }
}

/// A client error as a person reads it: the code's name and the server's message for a refusal.
fn server_text(error: &ClientError) -> String {
    match error {
        ClientError::Server { code, message, .. } => {
            if message.is_empty() {
                code.name().to_owned()
            } else {
                format!("{}: {message}", code.name())
            }
        }
        other => other.to_string(),
    }
}
