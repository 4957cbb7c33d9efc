//! The scripting subcommands: each resumes the stored session (or creates one), does one thing
//! through [`Net`], and returns a [`Report`] that `main` prints as text or JSON.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tern_protocol::frames::Authenticated;
use tern_protocol::types::{
    Attachment, ConversationId, ConversationKind, ConversationSummary, Member, Message, Role,
    UserId,
};
use tern_protocol::{Update, UpdateKind};

use tern_protocol::limits::DEVICE_NAME_BYTES_MAX;

use crate::cli::{AuthArgs, BackupCommand, Command, GroupCommand, RoleArg, Target};
use crate::config::{self, Config, Session, SERVER_DEFAULT};
use crate::error::CliError;
use crate::format;
use crate::net::{self, Credentials, Net};
use tern_client::Crypto;

/// Most sync pages one `tern sync` reads.
const SYNC_PAGES_MAX: usize = 1_000;

/// What a command prints: text for people, JSON for scripts.
#[derive(Debug)]
pub(crate) struct Report {
    /// The text form; printed with a trailing newline unless empty.
    pub(crate) text: String,
    /// The JSON form.
    pub(crate) json: Value,
}

impl Report {
    fn new(text: impl Into<String>, json: Value) -> Report {
        Report {
            text: text.into(),
            json,
        }
    }
}

/// What every command shares: the config file and the global options.
#[derive(Debug)]
pub(crate) struct Context {
    /// Where the config file is.
    pub(crate) config_path: PathBuf,
    /// Its content.
    pub(crate) config: Config,
    /// `--server`, when given.
    pub(crate) server_override: Option<String>,
    /// Whether the config changed and must be saved.
    pub(crate) dirty: bool,
}

impl Context {
    /// Loads the config file.
    pub(crate) fn load(
        config_path: PathBuf,
        server_override: Option<String>,
    ) -> Result<Context, CliError> {
        let config = config::load(&config_path)?;
        Ok(Context {
            config_path,
            config,
            server_override,
            dirty: false,
        })
    }

    /// The server to talk to: `--server`, else the config file's, else the stored session's, else
    /// the default.
    pub(crate) fn server(&self) -> String {
        self.server_override
            .clone()
            .or_else(|| self.config.server.clone())
            .or_else(|| self.config.session.as_ref().map(|s| s.server.clone()))
            .unwrap_or_else(|| SERVER_DEFAULT.to_owned())
    }

    /// The device name for a new device.
    pub(crate) fn device_name(&self, asked: Option<&str>) -> String {
        asked
            .map(str::to_owned)
            .or_else(|| self.config.device_name.clone())
            .unwrap_or_else(|| format!("tern on {}", hostname()))
            .chars()
            .scan(0, |bytes, c| {
                *bytes += c.len_utf8();
                (*bytes <= DEVICE_NAME_BYTES_MAX as usize).then_some(c)
            })
            .collect()
    }

    /// Saves the config file if anything changed.
    pub(crate) fn save(&mut self) -> Result<(), CliError> {
        if self.dirty {
            config::save(&self.config_path, &self.config)?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Stores a fresh session from an `Authenticated` reply with a token.
    pub(crate) fn store_session(&mut self, server: &str, auth: &Authenticated) {
        if let Some(token) = auth.token {
            self.config.session = Some(Session {
                server: server.to_owned(),
                username: auth.username.clone(),
                user_id: auth.user_id,
                device_id: auth.device_id,
                token: config::encode_hex(&token),
                cursor: 0,
            });
        }
        self.config.remember(&auth.username, auth.user_id);
        self.dirty = true;
    }

    /// Connects and resumes the stored session.
    async fn resume(&mut self) -> Result<(Net, Session), CliError> {
        let session = self.config.session.clone().ok_or(CliError::NotLoggedIn)?;
        let token = session.token(&self.config_path)?;
        let net = Net::connect(&self.server()).await?;
        net.authenticate(&Credentials::Resume(token), "").await?;
        Ok((net, session))
    }

    /// The directory of this device's end-to-end encryption state: the config file's.
    fn crypto_dir(&self) -> PathBuf {
        self.config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// This device's end-to-end encryption machine: its state in a file beside the config file,
    /// its keys published and topped up, the keys other devices sent it taken in and, when it
    /// keeps a key backup, backed up.
    async fn crypto(&self, net: &Net, session: &Session) -> Result<Crypto, CliError> {
        let crypto = self.crypto_machine(net, session).await?;
        back_up_keys(net, &crypto).await;
        Ok(crypto)
    }

    /// [`Context::crypto`] without the backup upload.
    async fn crypto_machine(&self, net: &Net, session: &Session) -> Result<Crypto, CliError> {
        net::open_crypto(net, &self.crypto_dir(), session.user_id, session.device_id).await
    }

    /// A user's display name: the remembered username, else `#ID`.
    fn name(&self, user_id: UserId) -> String {
        self.config
            .username(user_id)
            .map_or_else(|| format!("#{user_id}"), str::to_owned)
    }

    /// Learns the names of the users among `ids` the config file does not know yet, asking the
    /// server once for all of them (and remembering the answers).
    async fn learn_names(
        &mut self,
        net: &Net,
        ids: impl IntoIterator<Item = UserId>,
    ) -> Result<(), CliError> {
        let mut unknown: Vec<UserId> = ids
            .into_iter()
            .filter(|id| *id != 0 && self.config.username(*id).is_none())
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if unknown.is_empty() {
            return Ok(());
        }
        for user in net.users(&unknown).await? {
            self.config.remember(&user.username, user.user_id);
            self.dirty = true;
        }
        Ok(())
    }

    /// A user's id by name, asking the server (and remembering the answer).
    async fn user_id(&mut self, net: &Net, username: &str) -> Result<UserId, CliError> {
        let user = net.lookup_user(username).await?;
        if self.config.user_id(&user.username) != Some(user.user_id) {
            self.config.remember(&user.username, user.user_id);
            self.dirty = true;
        }
        Ok(user.user_id)
    }

    /// The conversation a target names: the direct one with a user (created if needed), or an id.
    async fn conversation_id(
        &mut self,
        net: &Net,
        user: Option<&str>,
        group: Option<ConversationId>,
    ) -> Result<ConversationId, CliError> {
        match (user, group) {
            (_, Some(id)) => Ok(id),
            (Some(username), None) => {
                let user_id = self.user_id(net, username).await?;
                Ok(net.open_direct(user_id).await?.conversation_id)
            }
            (None, None) => Err(CliError::Usage("name a user or a --group ID".to_owned())),
        }
    }
}

/// Runs one scripting command.
pub(crate) async fn run(command: Command, ctx: &mut Context) -> Result<Report, CliError> {
    match command {
        Command::Chat => Err(CliError::Usage(
            "chat is the interactive client, not a scripting command".to_owned(),
        )),
        Command::Register(args) => authenticate(ctx, args, true).await,
        Command::Login(args) => authenticate(ctx, args, false).await,
        Command::Whoami => whoami(ctx).await,
        Command::Logout => logout(ctx).await,
        Command::Devices => devices(ctx).await,
        Command::Revoke { device_id } => revoke(ctx, device_id).await,
        Command::Send {
            group,
            encrypted,
            args,
        } => {
            let (user, text) = match (group, args.as_slice()) {
                (Some(_), [text]) => (None, text.clone()),
                (None, [user, text]) => (Some(user.clone()), text.clone()),
                (Some(_), _) => {
                    return Err(CliError::Usage(
                        "with --group, give the text alone: tern send --group ID TEXT".to_owned(),
                    ))
                }
                (None, _) => {
                    return Err(CliError::Usage(
                        "give a user and the text: tern send USER TEXT".to_owned(),
                    ))
                }
            };
            let to = Destination {
                user: user.as_deref(),
                group,
                encrypted,
            };
            send(ctx, to, &text, None, None).await
        }
        Command::History {
            target,
            limit,
            before,
            after,
        } => history(ctx, &target, limit, before.unwrap_or(0), after).await,
        Command::Read { target } => read(ctx, &target).await,
        Command::Conversations => conversations(ctx).await,
        Command::Groups => groups(ctx).await,
        Command::Group(command) => group(ctx, command).await,
        Command::Upload {
            file,
            to,
            group,
            mime,
            message,
        } => {
            if to.is_none() && group.is_none() {
                return Err(CliError::Usage(
                    "say where to send it: --to USER or --group ID".to_owned(),
                ));
            }
            let text = message.unwrap_or_else(|| {
                file.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let mime = mime.unwrap_or_else(|| net::guess_mime(&file));
            let to = Destination {
                user: to.as_deref(),
                group,
                encrypted: false,
            };
            send(ctx, to, &text, Some(&file), Some(&mime)).await
        }
        Command::Download { media_id, out } => download(ctx, media_id, &out).await,
        Command::Sync => sync(ctx).await,
        Command::Verify { user } => verify(ctx, &user).await,
        Command::Backup(BackupCommand::Enable) => backup_enable(ctx).await,
        Command::Backup(BackupCommand::Restore { recovery_key }) => {
            let recovery_key = if recovery_key.is_empty() {
                read_secret("recovery key")?
            } else {
                recovery_key.join(" ")
            };
            backup_restore(ctx, &recovery_key).await
        }
    }
}

/// Where `send` and `upload` send to.
#[derive(Debug, Clone, Copy)]
struct Destination<'a> {
    user: Option<&'a str>,
    group: Option<ConversationId>,
    /// Create the direct conversation encrypted if it is new.
    encrypted: bool,
}

async fn authenticate(
    ctx: &mut Context,
    args: AuthArgs,
    register: bool,
) -> Result<Report, CliError> {
    let username = args.username.to_lowercase();
    let password = read_password(args.password_stdin, register)?;
    let server = ctx.server();
    let device_name = ctx.device_name(args.device.as_deref());
    let credentials = if register {
        Credentials::Register { username, password }
    } else {
        Credentials::Login { username, password }
    };
    let net = Net::connect(&server).await?;
    let auth = net.authenticate(&credentials, &device_name).await?;
    net.close().await;
    if let Some(old) = &ctx.config.session {
        // The old device stays registered on its server; say so, and how to remove it.
        let hint = if old.username == auth.username && old.server == server {
            format!("; `tern revoke {}` removes it", old.device_id)
        } else {
            String::new()
        };
        eprintln!(
            "tern: replacing the stored session of {} (device {} on {}){hint}",
            old.username, old.device_id, old.server
        );
    }
    ctx.store_session(&server, &auth);
    let verb = if register {
        "registered"
    } else {
        "logged in as"
    };
    Ok(Report::new(
        format!(
            "{verb} {} (user {}, device {}) on {server}",
            auth.username, auth.user_id, auth.device_id
        ),
        json!({
            "username": auth.username,
            "user_id": auth.user_id,
            "device_id": auth.device_id,
            "server": server,
        }),
    ))
}

async fn whoami(ctx: &mut Context) -> Result<Report, CliError> {
    let (net, session) = ctx.resume().await?;
    net.close().await;
    let server = ctx.server();
    Ok(Report::new(
        format!(
            "{} (user {}, device {}) on {server}",
            session.username, session.user_id, session.device_id
        ),
        json!({
            "username": session.username,
            "user_id": session.user_id,
            "device_id": session.device_id,
            "server": server,
        }),
    ))
}

async fn logout(ctx: &mut Context) -> Result<Report, CliError> {
    let (net, session) = ctx.resume().await?;
    net.logout().await?;
    net.close().await;
    ctx.config.session = None;
    ctx.dirty = true;
    Ok(Report::new(
        format!(
            "logged out {} (device {} revoked)",
            session.username, session.device_id
        ),
        json!({ "username": session.username, "device_id": session.device_id }),
    ))
}

async fn devices(ctx: &mut Context) -> Result<Report, CliError> {
    let (net, _) = ctx.resume().await?;
    let devices = net.devices().await?;
    net.close().await;
    let lines: Vec<String> = devices
        .iter()
        .map(|d| {
            format!(
                "{:>3}  {:<24}  {}  last active {}{}",
                d.device_id,
                d.name,
                if d.online { "online " } else { "offline" },
                format::timestamp(d.last_active_at),
                if d.current { "  (this one)" } else { "" }
            )
        })
        .collect();
    let json: Vec<Value> = devices
        .iter()
        .map(|d| {
            json!({
                "device_id": d.device_id,
                "name": d.name,
                "created_at": d.created_at,
                "last_active_at": d.last_active_at,
                "online": d.online,
                "current": d.current,
            })
        })
        .collect();
    Ok(Report::new(lines.join("\n"), Value::Array(json)))
}

async fn revoke(ctx: &mut Context, device_id: u32) -> Result<Report, CliError> {
    let (net, session) = ctx.resume().await?;
    if device_id == session.device_id {
        net.close().await;
        return Err(CliError::Usage(
            "that is this device: use `tern logout`".to_owned(),
        ));
    }
    net.revoke_device(device_id).await?;
    net.close().await;
    Ok(Report::new(
        format!("revoked device {device_id}"),
        json!({ "device_id": device_id }),
    ))
}

async fn send(
    ctx: &mut Context,
    to: Destination<'_>,
    text: &str,
    file: Option<&Path>,
    mime: Option<&str>,
) -> Result<Report, CliError> {
    // Check the file before connecting, so a missing file fails without touching the server.
    if let Some(path) = file {
        std::fs::File::open(path).map_err(|source| CliError::File {
            path: path.to_owned(),
            source,
        })?;
    }
    let (net, session) = ctx.resume().await?;
    let conversation_id = match (to.user, to.group, to.encrypted) {
        (Some(username), None, true) => {
            let user_id = ctx.user_id(&net, username).await?;
            net.open_direct_encrypted(user_id).await?.conversation_id
        }
        _ => ctx.conversation_id(&net, to.user, to.group).await?,
    };
    if net.is_encrypted(conversation_id).await? {
        return send_encrypted(ctx, &net, &session, conversation_id, text, file, mime).await;
    }
    let mut attachments = Vec::new();
    let mut media = Value::Null;
    if let Some(path) = file {
        let info = net
            .upload(path, mime.unwrap_or("application/octet-stream"))
            .await?;
        attachments.push(info.media_id);
        media = json!({ "media_id": info.media_id, "size": info.size, "mime": info.mime });
    }
    let client_msg_id = net::random_bytes::<16>()?;
    let sent = net
        .send(conversation_id, client_msg_id, text, attachments)
        .await?;
    net.close().await;
    let mut text = format!(
        "sent to conversation {} as message {} (seq {})",
        sent.conversation_id, sent.message_id, sent.seq
    );
    if let Some(media_id) = media.get("media_id") {
        text = format!("uploaded media {media_id}; {text}");
    }
    Ok(Report::new(
        text,
        json!({
            "conversation_id": sent.conversation_id,
            "seq": sent.seq,
            "message_id": sent.message_id,
            "ts": sent.ts,
            "media": media,
        }),
    ))
}

/// `send` to an encrypted conversation: the text and the file are encrypted on this device.
async fn send_encrypted(
    ctx: &mut Context,
    net: &Net,
    session: &Session,
    conversation_id: ConversationId,
    text: &str,
    file: Option<&Path>,
    mime: Option<&str>,
) -> Result<Report, CliError> {
    let crypto = ctx.crypto(net, session).await?;
    let mut attachments = Vec::new();
    let mut media = Value::Null;
    if let Some(path) = file {
        let data = std::fs::read(path).map_err(|source| CliError::File {
            path: path.to_owned(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mime = mime.unwrap_or("application/octet-stream");
        let file = crypto
            .encrypt_attachment(net.client(), &data, mime, &name)
            .await?;
        media = json!({ "media_id": file.media_id, "size": file.size, "mime": file.mime });
        attachments.push(file);
    }
    let client_msg_id = net::random_bytes::<16>()?;
    let sent = crypto
        .send(
            net.client(),
            conversation_id,
            client_msg_id,
            text,
            attachments,
        )
        .await?;
    // A new room key may have been started for this message.
    back_up_keys(net, &crypto).await;
    net.close().await;
    Ok(Report::new(
        format!(
            "sent encrypted to conversation {} as message {} (seq {})",
            sent.conversation_id, sent.message_id, sent.seq
        ),
        json!({
            "conversation_id": sent.conversation_id,
            "seq": sent.seq,
            "message_id": sent.message_id,
            "ts": sent.ts,
            "encrypted": true,
            "media": media,
        }),
    ))
}

/// Replaces the bodies of encrypted messages by their text, or by why it cannot be read; returns
/// which messages were encrypted.
async fn open_messages(
    ctx: &mut Context,
    net: &Net,
    session: &Session,
    messages: &mut [Message],
) -> Result<Vec<bool>, CliError> {
    let encrypted: Vec<bool> = messages
        .iter()
        .map(|m| tern_protocol::e2e::is_encrypted_body(&m.body))
        .collect();
    if !encrypted.contains(&true) {
        return Ok(encrypted);
    }
    let crypto = ctx.crypto(net, session).await?;
    for (message, &sealed) in messages.iter_mut().zip(&encrypted) {
        if !sealed {
            continue;
        }
        message.body = match crypto.decrypt(message).await {
            Ok(opened) => {
                let files: Vec<String> = opened
                    .attachments
                    .iter()
                    .map(|f| format!("{} ({}, {} bytes)", f.name, f.mime, f.size))
                    .collect();
                if files.is_empty() {
                    opened.text
                } else {
                    format!("{} [encrypted files: {}]", opened.text, files.join(", "))
                }
            }
            Err(e) => format!("[cannot decrypt: {e}]"),
        };
    }
    Ok(encrypted)
}

async fn verify(ctx: &mut Context, username: &str) -> Result<Report, CliError> {
    let (net, session) = ctx.resume().await?;
    let other = ctx.user_id(&net, username).await?;
    let crypto = ctx.crypto(&net, &session).await?;
    let devices = crypto
        .devices(net.client(), &[session.user_id, other])
        .await?;
    let changed = crypto.take_device_changes().await;
    let number = crypto.safety_number(net.client(), other).await?;
    net.close().await;
    let mut lines = Vec::new();
    let mut json_devices = Vec::new();
    for device in &devices {
        let whose = if device.user_id == session.user_id {
            "you".to_owned()
        } else {
            username.to_owned()
        };
        let this = if device.user_id == session.user_id && device.device_id == session.device_id {
            "  (this one)"
        } else {
            ""
        };
        lines.push(format!(
            "{whose:>12} device {:>3}: {}{this}",
            device.device_id,
            device.fingerprint()
        ));
        json_devices.push(json!({
            "user_id": device.user_id,
            "device_id": device.device_id,
            "fingerprint": device.fingerprint(),
        }));
    }
    if devices.iter().all(|d| d.user_id != other) {
        lines.push(format!("{username} has no device with encryption keys yet"));
    }
    if changed.contains(&other) {
        lines.push(format!(
            "warning: {username}'s devices changed since you last looked: verify again"
        ));
    }
    lines.push(format!("safety number: {number}"));
    Ok(Report::new(
        lines.join("\n"),
        json!({
            "user_id": other,
            "devices": json_devices,
            "safety_number": number,
            "changed": changed.contains(&other),
        }),
    ))
}

/// Uploads the room keys the key backup lacks, when this device keeps one. A failure is a warning:
/// the command's own work is done, and the next command that handles keys uploads them.
async fn back_up_keys(net: &Net, crypto: &Crypto) {
    if let Err(error) = net::back_up_keys(net, crypto).await {
        eprintln!(
            "tern: warning: the key backup was not updated ({}); the next command tries again",
            error.report()
        );
    }
}

/// Why the machine cannot be used for the key backup: said as such.
fn not_set_up(error: CliError) -> CliError {
    match error {
        CliError::Crypto(reason) => {
            CliError::Crypto(format!("not set up on this device ({reason})"))
        }
        other => other,
    }
}

async fn backup_enable(ctx: &mut Context) -> Result<Report, CliError> {
    let session = ctx.config.session.clone().ok_or(CliError::NotLoggedIn)?;
    let state = net::crypto_path(&ctx.crypto_dir(), session.user_id, session.device_id);
    if !state.exists() {
        // A backup from here would hold nothing, and would replace the account's backup.
        return Err(CliError::Crypto(
            "not set up on this device yet, so it holds no room keys to back up: send or read an \
             encrypted message first, or restore the account's backup with `tern backup restore \
             RECOVERY_KEY`"
                .to_owned(),
        ));
    }
    let (net, session) = ctx.resume().await?;
    let crypto = ctx
        .crypto_machine(&net, &session)
        .await
        .map_err(not_set_up)?;
    let enabled = net::enable_backup(&net, &crypto).await?;
    net.close().await;
    if enabled.replaced {
        eprintln!(
            "tern: the account's earlier key backup was replaced; its recovery key no longer works"
        );
    }
    Ok(Report::new(
        format!(
            "recovery key: {}\nIt is shown only now: keep it safe, `tern backup restore \
             RECOVERY_KEY` needs it to read earlier encrypted messages on a new device.",
            enabled.recovery_key
        ),
        json!({ "recovery_key": enabled.recovery_key, "replaced": enabled.replaced }),
    ))
}

async fn backup_restore(ctx: &mut Context, recovery_key: &str) -> Result<Report, CliError> {
    // A mistyped key fails before the server is asked.
    if !net::is_recovery_key(recovery_key) {
        return Err(CliError::Usage(net::RECOVERY_KEY_FORMAT.to_owned()));
    }
    let (net, session) = ctx.resume().await?;
    let crypto = ctx
        .crypto_machine(&net, &session)
        .await
        .map_err(not_set_up)?;
    let restored = net::restore_backup(&net, &crypto, recovery_key).await?;
    net.close().await;
    let keys = if restored == 1 { "key" } else { "keys" };
    Ok(Report::new(
        format!("restored {restored} room {keys} from the key backup"),
        json!({ "restored": restored }),
    ))
}

async fn history(
    ctx: &mut Context,
    target: &Target,
    limit: u32,
    before: u64,
    after: Option<u64>,
) -> Result<Report, CliError> {
    let (net, session) = ctx.resume().await?;
    let conversation_id = ctx
        .conversation_id(&net, target.user.as_deref(), target.group)
        .await?;
    let mut page = match after {
        Some(after) => net.history_after(conversation_id, after, limit).await?,
        None => net.history(conversation_id, before, limit).await?,
    };
    ctx.learn_names(&net, page.messages.iter().map(|m| m.sender))
        .await?;
    let encrypted = open_messages(ctx, &net, &session, &mut page.messages).await?;
    net.close().await;
    let lines: Vec<String> = page
        .messages
        .iter()
        .map(|message| message_line(ctx, message))
        .collect();
    let messages: Vec<Value> = page
        .messages
        .iter()
        .zip(&encrypted)
        .map(|(message, &sealed)| {
            let mut json = message_json(ctx, message);
            json["encrypted"] = json!(sealed);
            json
        })
        .collect();
    Ok(Report::new(
        lines.join("\n"),
        json!({
            "conversation_id": conversation_id,
            "messages": messages,
            "has_more": page.has_more,
        }),
    ))
}

async fn read(ctx: &mut Context, target: &Target) -> Result<Report, CliError> {
    let (net, _) = ctx.resume().await?;
    let conversation_id = ctx
        .conversation_id(&net, target.user.as_deref(), target.group)
        .await?;
    let info = net.conversation(conversation_id).await?;
    net.mark_read(conversation_id, info.last_seq).await?;
    net.close().await;
    Ok(Report::new(
        format!(
            "conversation {conversation_id} read up to seq {}",
            info.last_seq
        ),
        json!({ "conversation_id": conversation_id, "read_seq": info.last_seq }),
    ))
}

async fn conversations(ctx: &mut Context) -> Result<Report, CliError> {
    let (net, _) = ctx.resume().await?;
    let list = net.conversations().await?;
    let mentioned = list.iter().flat_map(|summary| {
        let sender = summary.last_message.as_ref().map(|m| m.sender);
        std::iter::once(summary.peer).chain(sender)
    });
    ctx.learn_names(&net, mentioned).await?;
    net.close().await;
    let lines: Vec<String> = list
        .iter()
        .map(|summary| {
            let last = summary
                .last_message
                .as_ref()
                .map(|m| format!("  last: {}: {}", ctx.name(m.sender), one_line(&m.body)))
                .unwrap_or_default();
            format!(
                "{:>6}  {:<6}  {:<24}  unread {}{last}",
                summary.conversation_id,
                kind_name(summary.kind),
                conversation_title(ctx, summary),
                summary.unread
            )
        })
        .collect();
    let json: Vec<Value> = list
        .iter()
        .map(|summary| {
            json!({
                "conversation_id": summary.conversation_id,
                "kind": kind_name(summary.kind),
                "name": summary.name,
                "peer": (summary.peer != 0).then_some(summary.peer),
                "peer_name": (summary.peer != 0).then(|| ctx.config.username(summary.peer)).flatten(),
                "last_seq": summary.last_seq,
                "read_seq": summary.read_seq,
                "unread": summary.unread,
                "last_message": summary.last_message.as_ref().map(|m| message_json(ctx, m)),
            })
        })
        .collect();
    let text = if lines.is_empty() {
        "no conversations".to_owned()
    } else {
        lines.join("\n")
    };
    Ok(Report::new(text, Value::Array(json)))
}

async fn groups(ctx: &mut Context) -> Result<Report, CliError> {
    let (net, _) = ctx.resume().await?;
    let list = net.conversations().await?;
    let mut lines = Vec::new();
    let mut json = Vec::new();
    for summary in list.iter().filter(|s| s.kind == ConversationKind::Group) {
        let info = net.conversation(summary.conversation_id).await?;
        ctx.learn_names(&net, info.members.iter().map(|m| m.user_id))
            .await?;
        lines.push(format!(
            "{:>6}  {:<24}  {}",
            info.conversation_id,
            info.name,
            members_text(ctx, &info.members)
        ));
        json.push(json!({
            "conversation_id": info.conversation_id,
            "name": info.name,
            "members": members_json(ctx, &info.members),
            "unread": info.unread,
        }));
    }
    net.close().await;
    let text = if lines.is_empty() {
        "no groups".to_owned()
    } else {
        lines.join("\n")
    };
    Ok(Report::new(text, Value::Array(json)))
}

async fn group(ctx: &mut Context, command: GroupCommand) -> Result<Report, CliError> {
    let (net, _) = ctx.resume().await?;
    let report = match command {
        GroupCommand::Create {
            name,
            members,
            encrypted,
        } => {
            let mut ids = Vec::new();
            for username in members.iter().filter(|m| !m.is_empty()) {
                ids.push(ctx.user_id(&net, username).await?);
            }
            let info = if encrypted {
                net.create_encrypted_group(&name, ids).await?
            } else {
                net.create_group(&name, ids).await?
            };
            Report::new(
                format!(
                    "created group {} ({}): {}",
                    info.conversation_id,
                    info.name,
                    members_text(ctx, &info.members)
                ),
                json!({
                    "conversation_id": info.conversation_id,
                    "name": info.name,
                    "members": members_json(ctx, &info.members),
                }),
            )
        }
        GroupCommand::Add { id, users } => {
            let mut ids = Vec::new();
            for username in &users {
                ids.push(ctx.user_id(&net, username).await?);
            }
            net.add_members(id, ids.clone()).await?;
            Report::new(
                format!("added {} to group {id}", users.join(", ")),
                json!({ "conversation_id": id, "added": ids }),
            )
        }
        GroupCommand::Remove { id, user } => {
            let user_id = ctx.user_id(&net, &user).await?;
            net.remove_member(id, user_id).await?;
            Report::new(
                format!("removed {user} from group {id}"),
                json!({ "conversation_id": id, "removed": user_id }),
            )
        }
        GroupCommand::Leave { id } => {
            net.leave_group(id).await?;
            Report::new(format!("left group {id}"), json!({ "conversation_id": id }))
        }
        GroupCommand::Rename { id, name } => {
            net.rename_group(id, &name).await?;
            Report::new(
                format!("renamed group {id} to {name}"),
                json!({ "conversation_id": id, "name": name }),
            )
        }
        GroupCommand::Role { id, user, role } => {
            let user_id = ctx.user_id(&net, &user).await?;
            let role = match role {
                RoleArg::Member => Role::Member,
                RoleArg::Admin => Role::Admin,
                RoleArg::Owner => Role::Owner,
            };
            net.set_role(id, user_id, role).await?;
            Report::new(
                format!("{user} is now {} of group {id}", role_name(role)),
                json!({ "conversation_id": id, "user_id": user_id, "role": role_name(role) }),
            )
        }
        GroupCommand::Show { id } => {
            let info = net.conversation(id).await?;
            ctx.learn_names(&net, info.members.iter().map(|m| m.user_id))
                .await?;
            Report::new(
                format!(
                    "{} ({}): {}",
                    info.name,
                    info.conversation_id,
                    members_text(ctx, &info.members)
                ),
                json!({
                    "conversation_id": info.conversation_id,
                    "name": info.name,
                    "kind": kind_name(info.kind),
                    "members": members_json(ctx, &info.members),
                    "last_seq": info.last_seq,
                    "unread": info.unread,
                }),
            )
        }
    };
    net.close().await;
    Ok(report)
}

async fn download(ctx: &mut Context, media_id: u64, out: &Path) -> Result<Report, CliError> {
    let (net, _) = ctx.resume().await?;
    let info = net.download(media_id, out).await?;
    net.close().await;
    Ok(Report::new(
        format!(
            "saved media {media_id} ({}, {}) to {}",
            info.mime,
            format::size(info.size),
            out.display()
        ),
        json!({
            "media_id": media_id,
            "size": info.size,
            "mime": info.mime,
            "path": out.display().to_string(),
            "sha256": config::encode_hex(&info.sha256),
        }),
    ))
}

async fn sync(ctx: &mut Context) -> Result<Report, CliError> {
    let (net, session) = ctx.resume().await?;
    let mut cursor = session.cursor;
    let mut fresh = Vec::new();
    for _ in 0..SYNC_PAGES_MAX {
        let mut page = net.sync_page(cursor).await?;
        let mut messages: Vec<Message> = page
            .updates
            .iter()
            .filter_map(|u| match &u.kind {
                UpdateKind::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        open_messages(ctx, &net, &session, &mut messages).await?;
        let mut opened = messages.into_iter();
        for update in &mut page.updates {
            if let UpdateKind::Message(m) = &mut update.kind {
                if let Some(open) = opened.next() {
                    *m = open;
                }
            }
        }
        if page.head < cursor {
            // The stored cursor runs ahead of the log (a restored server): start from its head.
            cursor = page.head;
        }
        for update in page.updates {
            if update.user_seq <= cursor {
                continue;
            }
            cursor = update.user_seq;
            // A `Skipped` update carries nothing: the cursor passes it, nothing is shown.
            if !matches!(update.kind, UpdateKind::Skipped(_)) {
                fresh.push(update);
            }
        }
        if !page.has_more {
            break;
        }
    }
    // Every user an update names is shown by name, as the other commands show them.
    ctx.learn_names(&net, fresh.iter().flat_map(update_users))
        .await?;
    net.ack(cursor).await?;
    net.close().await;
    let lines: Vec<String> = fresh.iter().map(|u| update_line(ctx, u)).collect();
    let updates: Vec<Value> = fresh.iter().map(|u| update_json(ctx, u)).collect();
    if let Some(session) = ctx.config.session.as_mut() {
        session.cursor = cursor;
        ctx.dirty = true;
    }
    Ok(Report::new(
        lines.join("\n"),
        json!({ "cursor": cursor, "updates": updates }),
    ))
}

// ---------------------------------------------------------------- text and JSON forms

fn kind_name(kind: ConversationKind) -> &'static str {
    match kind {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Member => "member",
        Role::Admin => "admin",
        Role::Owner => "owner",
    }
}

fn conversation_title(ctx: &Context, summary: &ConversationSummary) -> String {
    match summary.kind {
        ConversationKind::Direct => ctx.name(summary.peer),
        ConversationKind::Group => summary.name.clone(),
    }
}

fn members_text(ctx: &Context, members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("{} ({})", ctx.name(m.user_id), role_name(m.role)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn members_json(ctx: &Context, members: &[Member]) -> Vec<Value> {
    members
        .iter()
        .map(|m| {
            json!({
                "user_id": m.user_id,
                "username": ctx.config.username(m.user_id),
                "role": role_name(m.role),
            })
        })
        .collect()
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn attachments_text(attachments: &[Attachment]) -> String {
    attachments
        .iter()
        .map(|a| {
            format!(
                " [media {} {} {}]",
                a.media_id,
                a.mime,
                format::size(a.size)
            )
        })
        .collect()
}

fn message_line(ctx: &Context, message: &Message) -> String {
    format!(
        "[{}] {} {}: {}{}",
        message.seq,
        format::timestamp(message.ts),
        ctx.name(message.sender),
        one_line(&message.body),
        attachments_text(&message.attachments)
    )
}

fn message_json(ctx: &Context, message: &Message) -> Value {
    json!({
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "message_id": message.message_id,
        "sender": message.sender,
        "sender_name": ctx.config.username(message.sender),
        "sender_device": message.sender_device,
        "ts": message.ts,
        "body": message.body,
        "attachments": message.attachments.iter().map(|a| json!({
            "media_id": a.media_id,
            "size": a.size,
            "mime": a.mime,
        })).collect::<Vec<_>>(),
    })
}

/// The users an update names: those [`update_line`] and [`update_json`] show.
fn update_users(update: &Update) -> Vec<UserId> {
    match &update.kind {
        UpdateKind::Message(message) => vec![message.sender],
        UpdateKind::Receipt(receipt) => vec![receipt.user_id],
        UpdateKind::GroupCreated(created) => std::iter::once(created.actor)
            .chain(created.members.iter().map(|m| m.user_id))
            .collect(),
        UpdateKind::MembersAdded(added) => std::iter::once(added.actor)
            .chain(added.members.iter().copied())
            .collect(),
        UpdateKind::MemberRemoved(removed) => vec![removed.actor, removed.user_id],
        UpdateKind::GroupRenamed(renamed) => vec![renamed.actor],
        UpdateKind::RoleChanged(changed) => vec![changed.actor, changed.user_id],
        _ => Vec::new(),
    }
}

fn update_line(ctx: &Context, update: &Update) -> String {
    let text = match &update.kind {
        UpdateKind::Message(message) => format!(
            "message in {}: {}",
            message.conversation_id,
            message_line(ctx, message)
        ),
        UpdateKind::Receipt(receipt) => format!(
            "receipt in {}: {} {} up to seq {}",
            receipt.conversation_id,
            ctx.name(receipt.user_id),
            match receipt.kind {
                tern_protocol::types::ReceiptKind::Delivered => "received",
                tern_protocol::types::ReceiptKind::Read => "read",
            },
            receipt.up_to_seq
        ),
        UpdateKind::GroupCreated(created) => format!(
            "group {} ({}) created by {}",
            created.conversation_id,
            created.name,
            ctx.name(created.actor)
        ),
        UpdateKind::MembersAdded(added) => format!(
            "group {}: {} added {}",
            added.conversation_id,
            ctx.name(added.actor),
            added
                .members
                .iter()
                .map(|id| ctx.name(*id))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        UpdateKind::MemberRemoved(removed) => format!(
            "group {}: {} removed {}",
            removed.conversation_id,
            ctx.name(removed.actor),
            ctx.name(removed.user_id)
        ),
        UpdateKind::GroupRenamed(renamed) => format!(
            "group {} renamed to {} by {}",
            renamed.conversation_id,
            renamed.name,
            ctx.name(renamed.actor)
        ),
        UpdateKind::RoleChanged(changed) => format!(
            "group {}: {} is now {}",
            changed.conversation_id,
            ctx.name(changed.user_id),
            role_name(changed.role)
        ),
        other => format!("update of kind {}", other.code()),
    };
    format!("{:>6} {text}", update.user_seq)
}

fn update_json(ctx: &Context, update: &Update) -> Value {
    let mut value = match &update.kind {
        UpdateKind::Message(message) => {
            json!({ "kind": "message", "message": message_json(ctx, message) })
        }
        UpdateKind::Receipt(receipt) => json!({
            "kind": "receipt",
            "conversation_id": receipt.conversation_id,
            "user_id": receipt.user_id,
            "receipt": match receipt.kind {
                tern_protocol::types::ReceiptKind::Delivered => "delivered",
                tern_protocol::types::ReceiptKind::Read => "read",
            },
            "up_to_seq": receipt.up_to_seq,
            "ts": receipt.ts,
        }),
        UpdateKind::GroupCreated(created) => json!({
            "kind": "group_created",
            "conversation_id": created.conversation_id,
            "actor": created.actor,
            "name": created.name,
            "members": members_json(ctx, &created.members),
        }),
        UpdateKind::MembersAdded(added) => json!({
            "kind": "members_added",
            "conversation_id": added.conversation_id,
            "actor": added.actor,
            "members": added.members,
        }),
        UpdateKind::MemberRemoved(removed) => json!({
            "kind": "member_removed",
            "conversation_id": removed.conversation_id,
            "actor": removed.actor,
            "user_id": removed.user_id,
        }),
        UpdateKind::GroupRenamed(renamed) => json!({
            "kind": "group_renamed",
            "conversation_id": renamed.conversation_id,
            "actor": renamed.actor,
            "name": renamed.name,
        }),
        UpdateKind::RoleChanged(changed) => json!({
            "kind": "role_changed",
            "conversation_id": changed.conversation_id,
            "actor": changed.actor,
            "user_id": changed.user_id,
            "role": role_name(changed.role),
        }),
        other => json!({ "kind": other.code() }),
    };
    value["user_seq"] = json!(update.user_seq);
    value
}

// ---------------------------------------------------------------- passwords and host names

/// The password: the first line of standard input with `--password-stdin`, else `TERN_PASSWORD`,
/// else asked for on the terminal without echo. Never from the command line, where other users
/// of the machine could read it.
pub(crate) fn read_password(from_stdin: bool, confirm: bool) -> Result<String, CliError> {
    if from_stdin {
        let password = stdin_line()?;
        if password.is_empty() {
            return Err(CliError::Usage("no password on standard input".to_owned()));
        }
        return Ok(password);
    }
    if let Ok(password) = std::env::var("TERN_PASSWORD") {
        if !password.is_empty() {
            return Ok(password);
        }
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(
            "no password: pass --password-stdin or set TERN_PASSWORD".to_owned(),
        ));
    }
    let password = prompt_hidden("password: ")?;
    if confirm && prompt_hidden("again: ")? != password {
        return Err(CliError::Usage("the passwords differ".to_owned()));
    }
    Ok(password)
}

/// The first line of standard input, without its line ending.
fn stdin_line() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|source| CliError::File {
            path: PathBuf::from("<stdin>"),
            source,
        })?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// A secret that is not on the command line: asked for on the terminal without echo, else the
/// first line of standard input.
fn read_secret(what: &str) -> Result<String, CliError> {
    let secret = if std::io::stdin().is_terminal() {
        prompt_hidden(&format!("{what}: "))?
    } else {
        stdin_line()?
    };
    if secret.trim().is_empty() {
        return Err(CliError::Usage(format!(
            "no {what}: give it as an argument, on standard input, or type it when asked"
        )));
    }
    Ok(secret)
}

/// Reads a line from the terminal without echoing it.
fn prompt_hidden(prompt: &str) -> Result<String, CliError> {
    use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    use std::io::Write;

    let tty_error = |source| CliError::File {
        path: PathBuf::from("<terminal>"),
        source,
    };
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    crossterm::terminal::enable_raw_mode().map_err(tty_error)?;
    let mut text = String::new();
    let result = loop {
        match event::read() {
            Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => match key.code {
                KeyCode::Enter => break Ok(()),
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    break Err(CliError::Usage("cancelled".to_owned()))
                }
                KeyCode::Char(c) => text.push(c),
                KeyCode::Backspace => {
                    text.pop();
                }
                _ => {}
            },
            Ok(_) => {}
            Err(error) => break Err(tty_error(error)),
        }
    };
    let _ = crossterm::terminal::disable_raw_mode();
    eprintln!();
    result.map(|()| text)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "this host".to_owned())
}
