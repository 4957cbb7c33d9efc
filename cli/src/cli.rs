//! The command line: global options and one subcommand per scripting task (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tern_protocol::types::{ConversationId, DeviceId, MediaId};

/// tern: a terminal client for Tern chat servers.
///
/// Without a subcommand it starts the interactive client. The subcommands are for scripts: they
/// resume the session stored in the config file, do one thing, and print the result (as JSON with
/// --json). Passwords come from --password-stdin or the TERN_PASSWORD environment variable, or are
/// asked for on a terminal.
#[derive(Debug, Parser)]
#[command(
    name = "tern",
    version,
    propagate_version = true,
    args_override_self = true
)]
pub(crate) struct Cli {
    /// The server's address, host:port [default: the config file's, else 127.0.0.1:7400].
    #[arg(long, global = true, value_name = "ADDR")]
    pub(crate) server: Option<String>,

    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// The config file [default: $TERN_CONFIG, else $XDG_CONFIG_HOME/tern/config.toml, else
    /// ~/.config/tern/config.toml].
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// What to do; the interactive client when absent.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start the interactive client (the default).
    Chat,
    /// Create an account and log this client in as its first device.
    Register(AuthArgs),
    /// Log in to an existing account as a new device of it.
    Login(AuthArgs),
    /// Show the stored session, checked with the server.
    Whoami,
    /// Revoke this device's session and forget it.
    Logout,
    /// List this account's devices.
    Devices,
    /// Revoke another device of this account (its token stops working).
    Revoke {
        /// The device's id, as `devices` shows it.
        device_id: DeviceId,
    },
    /// Send a message: `tern send USER TEXT` or `tern send --group ID TEXT`.
    Send {
        /// Send to this group (or any conversation) by id instead of a user.
        #[arg(long, value_name = "ID")]
        group: Option<ConversationId>,
        /// Create the direct conversation encrypted end to end if it does not exist yet.
        /// (Messages to an encrypted conversation are always encrypted.)
        #[arg(long)]
        encrypted: bool,
        /// USER TEXT, or TEXT alone with --group.
        #[arg(required = true, num_args = 1..=2, value_name = "USER TEXT")]
        args: Vec<String>,
    },
    /// Show a conversation's messages, oldest first.
    History {
        /// Where.
        #[command(flatten)]
        target: Target,
        /// How many messages: the newest ones, or with --after the oldest ones.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only messages with a seq below this one (to page backwards).
        #[arg(long, value_name = "SEQ")]
        before: Option<u64>,
        /// Only messages with a seq above this one, the oldest of them first (to page forwards,
        /// from a message or the last one read; 0 starts at the first message).
        #[arg(long, value_name = "SEQ", conflicts_with = "before")]
        after: Option<u64>,
    },
    /// Mark a conversation read up to its newest message.
    Read {
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// List conversations with their unread counts.
    Conversations,
    /// List groups with their members.
    Groups,
    /// Create and manage groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Upload a file and send it as an attachment.
    Upload {
        /// The file.
        file: PathBuf,
        /// Send it to this user.
        #[arg(long, value_name = "USER", conflicts_with = "group")]
        to: Option<String>,
        /// Send it to this group (or any conversation) by id.
        #[arg(long, value_name = "ID")]
        group: Option<ConversationId>,
        /// The media type [default: guessed from the extension].
        #[arg(long)]
        mime: Option<String>,
        /// Text to send with it [default: the file's name].
        #[arg(long)]
        message: Option<String>,
    },
    /// Download an attachment into a file.
    Download {
        /// The media id, as `history` shows it.
        media_id: MediaId,
        /// Where to write it.
        #[arg(long, short, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print updates (messages, receipts, group changes) since the last `sync`, and acknowledge
    /// them, which tells senders their messages were delivered.
    Sync,
    /// Show the fingerprints of a user's devices and of yours, and your safety number with them:
    /// compare it with theirs (in person, or on a call) to know no one is in between.
    Verify {
        /// The other user.
        user: String,
    },
    /// Keep the room keys of encrypted conversations in a backup on the server, encrypted under a
    /// recovery key the server never sees, so that a new device can read earlier messages.
    #[command(subcommand)]
    Backup(BackupCommand),
}

/// The key backup subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Start a backup under a new recovery key, upload every room key this device holds, and
    /// print the recovery key, once.
    ///
    /// An earlier backup of the account is replaced (its recovery key stops working). Keys this
    /// device makes or receives later are added whenever `tern` handles them.
    Enable,
    /// Import the room keys of the account's backup into this device and print how many were new.
    ///
    /// A new device reads earlier encrypted messages once it has their keys. Keys it makes or
    /// receives later are added to the backup.
    Restore {
        /// The recovery key `backup enable` printed: 64 hexadecimal digits, quoted or not with the
        /// spaces between the groups of four. Left out, it is read from the first line of standard
        /// input, or asked for on the terminal without echo: either keeps it out of the process
        /// list, where other users of the machine could read it.
        #[arg(num_args = 0.., value_name = "RECOVERY_KEY")]
        recovery_key: Vec<String>,
    },
}

/// The group subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Create a group.
    Create {
        /// Its name.
        name: String,
        /// The other members, by username, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "USERS")]
        members: Vec<String>,
        /// Encrypt the group end to end (for good).
        #[arg(long)]
        encrypted: bool,
    },
    /// Add members to a group.
    Add {
        /// The group's id.
        id: ConversationId,
        /// The users to add.
        #[arg(required = true, value_delimiter = ',')]
        users: Vec<String>,
    },
    /// Remove a member from a group.
    Remove {
        /// The group's id.
        id: ConversationId,
        /// The member to remove.
        user: String,
    },
    /// Leave a group.
    Leave {
        /// The group's id.
        id: ConversationId,
    },
    /// Rename a group.
    Rename {
        /// The group's id.
        id: ConversationId,
        /// The new name.
        name: String,
    },
    /// Change a member's role (the owner only); `owner` hands ownership over.
    Role {
        /// The group's id.
        id: ConversationId,
        /// The member.
        user: String,
        /// The new role.
        role: RoleArg,
    },
    /// Show a group's members and roles.
    Show {
        /// The group's id.
        id: ConversationId,
    },
}

/// Options of `register` and `login`.
#[derive(Debug, Args)]
pub(crate) struct AuthArgs {
    /// The username.
    pub(crate) username: String,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub(crate) password_stdin: bool,
    /// The name this device is listed under [default: the config file's, else "tern on HOST"].
    #[arg(long, value_name = "NAME")]
    pub(crate) device: Option<String>,
}

/// A conversation named by the other user or by id.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// The other user of a direct conversation.
    #[arg(required_unless_present = "group", conflicts_with = "group")]
    pub(crate) user: Option<String>,
    /// A group (or any conversation) by id.
    #[arg(long, value_name = "ID")]
    pub(crate) group: Option<ConversationId>,
}

/// A group role on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum RoleArg {
    /// Sends, reads, renames, leaves.
    Member,
    /// Also adds and removes members.
    Admin,
    /// Also removes admins and changes roles.
    Owner,
}
