//! The interactive client's state machine: everything the screen shows, and what each key press,
//! network report and clock tick does to it.
//!
//! [`App`] has no terminal, no socket and no clock. Its three inputs are
//! [`App::handle_key`], [`App::handle_net`] and [`App::tick`], each given the time as an argument;
//! each returns the [`Request`]s for the network worker to carry out. `ui.rs` draws it and `tui.rs`
//! feeds it, so the behaviour (ticks, unread counts, typing, paging) is tested here without either.
//!
//! What it keeps follows the protocol's rules (spec §17): updates are applied once, by `user_seq`,
//! with a gap answered by a new `Sync`; messages are kept by `seq`, so one that arrives through its
//! `Sent`, its update and a history page is shown once; receipts are per-member watermarks that
//! never go down.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use tern_protocol::frames::{Authenticated, HistoryPage, Sent, TypingEvent};
use tern_protocol::types::{
    ClientMsgId, ConversationId, ConversationInfo, ConversationKind, ConversationSummary, Member,
    Message, Presence, ReceiptKind, Role, UserId,
};
use tern_protocol::{Update, UpdateKind};

use crate::net::{self, BackupEnabled, Credentials, NetEvent, Request};

/// How long a typing indicator lasts without a repeat (spec §12.5).
pub(crate) const TYPING_SHOWN_MS: u64 = 10_000;

/// How often `Typing{active: true}` is repeated while the user keeps typing (spec §12.5).
const TYPING_REPEAT_MS: u64 = 5_000;

/// The least time between two typing notifications for one conversation: `ternd` accepts two a
/// second and answers more with `RATE_LIMITED`.
const TYPING_GAP_MS: u64 = 600;

/// The user counts as having stopped typing after this long without a key.
const TYPING_IDLE_MS: u64 = 6_000;

/// Acknowledgements of live updates are sent at most this often (spec §10.5: in batches).
const ACK_INTERVAL_MS: u64 = 1_000;

/// Messages one PageUp or PageDown moves by.
pub(crate) const PAGE_MESSAGES: usize = 10;

/// The longest input line, in characters (the protocol's body limit is far above what one types).
const INPUT_CHARS_MAX: usize = 4_096;

/// Which screen is showing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Screen {
    /// The register or log-in form.
    Login,
    /// Waiting for the server.
    Connecting,
    /// The conversation list and the open chat.
    Main,
}

/// Which field of the form has the cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    /// The username.
    Username,
    /// The password.
    Password,
}

/// The register or log-in form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LoginForm {
    /// The username typed.
    pub(crate) username: String,
    /// The password typed (drawn as stars).
    pub(crate) password: String,
    /// The field with the cursor.
    pub(crate) field: Field,
    /// Whether the form creates an account rather than logging in.
    pub(crate) register: bool,
    /// Why the last attempt failed.
    pub(crate) error: Option<String>,
}

/// Where keys go on the main screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Focus {
    /// The conversation list: arrows move, Enter opens.
    List,
    /// The input line: keys type, Enter sends.
    Input,
}

/// A line at the bottom of the screen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Status {
    /// What it says.
    pub(crate) text: String,
    /// Whether it reports a failure.
    pub(crate) error: bool,
}

/// The state of one of the user's messages, as its ticks show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tick {
    /// Not yet acknowledged by the server.
    Pending,
    /// The server refused it or the connection failed.
    Failed,
    /// Stored (`Sent`).
    Sent,
    /// Delivered to every other member.
    Delivered,
    /// Read by every other member.
    Read,
}

/// A message the user sent that the server has not acknowledged yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Its idempotency key.
    pub(crate) client_msg_id: ClientMsgId,
    /// Its text.
    pub(crate) body: String,
    /// The file being uploaded for it, if any.
    pub(crate) file: Option<PathBuf>,
    /// Why sending failed, if it did.
    pub(crate) failed: Option<String>,
}

/// One conversation as the client knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Conversation {
    /// Its id.
    pub(crate) id: ConversationId,
    /// Direct or group.
    pub(crate) kind: ConversationKind,
    /// The group's name.
    pub(crate) name: String,
    /// For a direct conversation, the other user.
    pub(crate) peer: UserId,
    /// Its members, once known.
    pub(crate) members: Vec<Member>,
    /// The newest `seq` known.
    pub(crate) last_seq: u64,
    /// When its newest message was stored (ms), for ordering the list.
    pub(crate) last_ts: u64,
    /// The user's read watermark.
    pub(crate) read_seq: u64,
    /// Messages from others above the read watermark.
    pub(crate) unread: u64,
    /// The newest message, for the list's preview.
    pub(crate) preview: Option<Message>,
    /// Messages known, by `seq`.
    pub(crate) messages: BTreeMap<u64, Message>,
    /// The user's messages not yet acknowledged, in the order sent.
    pub(crate) pending: Vec<Pending>,
    /// Each other member's (delivered, read) watermarks.
    pub(crate) receipts: HashMap<UserId, (u64, u64)>,
    /// Whether its state and newest messages have been fetched.
    pub(crate) loaded: bool,
    /// Whether a fetch is under way.
    pub(crate) loading: bool,
    /// Whether older messages exist on the server than the oldest here.
    pub(crate) has_more: bool,
    /// Messages scrolled up from the newest.
    pub(crate) scroll: usize,
    /// Whether the user is no longer a member.
    pub(crate) left: bool,
}

impl Conversation {
    fn new(id: ConversationId) -> Conversation {
        Conversation {
            id,
            has_more: true,
            ..Conversation::default()
        }
    }

    /// The other members: the peer of a direct conversation, the members of a group but the user.
    pub(crate) fn others(&self, me: UserId) -> Vec<UserId> {
        if self.kind == ConversationKind::Direct && self.peer != 0 {
            return vec![self.peer];
        }
        self.members
            .iter()
            .map(|m| m.user_id)
            .filter(|id| *id != me)
            .collect()
    }

    /// The ticks of a stored message of the user's.
    pub(crate) fn tick(&self, me: UserId, seq: u64) -> Tick {
        let others = self.others(me);
        if others.is_empty() {
            return Tick::Sent;
        }
        let watermarks = |user: &UserId| self.receipts.get(user).copied().unwrap_or((0, 0));
        if others.iter().all(|u| watermarks(u).1 >= seq) {
            Tick::Read
        } else if others.iter().all(|u| {
            let (delivered, read) = watermarks(u);
            delivered.max(read) >= seq
        }) {
            Tick::Delivered
        } else {
            Tick::Sent
        }
    }

    fn upsert_member(&mut self, user_id: UserId, role: Role) {
        match self.members.iter_mut().find(|m| m.user_id == user_id) {
            Some(member) => member.role = role,
            None => self.members.push(Member { user_id, role }),
        }
    }

    fn recount_unread(&mut self) {
        if self.read_seq >= self.last_seq {
            self.unread = 0;
        } else {
            self.unread = self.unread.min(self.last_seq - self.read_seq);
        }
    }
}

/// The interactive client's whole state.
#[derive(Debug)]
pub(crate) struct App {
    /// The screen showing.
    pub(crate) screen: Screen,
    /// The form's state.
    pub(crate) form: LoginForm,
    /// The authenticated user.
    pub(crate) me: Option<Authenticated>,
    /// Conversations, newest activity first.
    pub(crate) conversations: Vec<Conversation>,
    /// The conversation the list's cursor is on.
    pub(crate) selected: Option<ConversationId>,
    /// The conversation shown on the right.
    pub(crate) open: Option<ConversationId>,
    /// Where keys go.
    pub(crate) focus: Focus,
    /// The input line.
    pub(crate) input: String,
    /// The bottom line.
    pub(crate) status: Option<Status>,
    /// Known usernames by id.
    pub(crate) names: HashMap<UserId, String>,
    /// Presence of followed users.
    pub(crate) presence: HashMap<UserId, Presence>,
    /// The conversations known to be end-to-end encrypted.
    pub(crate) encrypted: HashSet<ConversationId>,
    /// Who is typing where, until when (ms).
    pub(crate) typing: HashMap<(ConversationId, UserId), u64>,
    /// Users whose presence this client has subscribed to.
    followed: HashSet<UserId>,
    /// Users whose names were asked for.
    asked: HashSet<UserId>,
    /// Whether the user asked to quit, or the client cannot go on.
    pub(crate) quit: bool,
    /// Why the client cannot go on, when it cannot.
    pub(crate) fatal: Option<String>,
    /// Whether a stored session is being resumed.
    resuming: bool,
    /// The highest `user_seq` applied.
    cursor: u64,
    /// The highest `user_seq` acknowledged.
    acked: u64,
    /// When the last acknowledgement went out (ms).
    acked_at_ms: u64,
    /// Whether a `Sync` after a gap is under way.
    resyncing: bool,
    /// Random bytes that, with a counter, make this run's `client_msg_id`s.
    seed: [u8; 8],
    /// Messages sent this run.
    sent_count: u64,
    /// The conversation and time of the last `Typing{active: true}` sent.
    typing_sent: Option<(ConversationId, u64)>,
    /// A `Typing{active: false}` held back until [`TYPING_GAP_MS`] after the `true` it ends:
    /// the conversation and when that `true` went out.
    typing_stop_due: Option<(ConversationId, u64)>,
    /// When the user last typed a character (ms).
    typed_at_ms: u64,
    /// The time given with the input being handled (ms).
    now_ms: u64,
}

impl App {
    /// A client showing the form, with the names the config file knows. `seed` must be random:
    /// it makes the run's message ids unique.
    pub(crate) fn new(seed: [u8; 8], names: HashMap<UserId, String>) -> App {
        App {
            screen: Screen::Login,
            form: LoginForm {
                username: String::new(),
                password: String::new(),
                field: Field::Username,
                register: false,
                error: None,
            },
            me: None,
            conversations: Vec::new(),
            selected: None,
            open: None,
            focus: Focus::List,
            input: String::new(),
            status: None,
            names,
            presence: HashMap::new(),
            encrypted: HashSet::new(),
            typing: HashMap::new(),
            followed: HashSet::new(),
            asked: HashSet::new(),
            quit: false,
            fatal: None,
            resuming: false,
            cursor: 0,
            acked: 0,
            acked_at_ms: 0,
            resyncing: false,
            seed,
            sent_count: 0,
            typing_sent: None,
            typing_stop_due: None,
            typed_at_ms: 0,
            now_ms: 0,
        }
    }

    /// Starts with a stored session instead of the form.
    pub(crate) fn resume(&mut self, credentials: Credentials) -> Vec<Request> {
        self.screen = Screen::Connecting;
        self.resuming = true;
        vec![Request::Start(credentials)]
    }

    /// The user's id, once authenticated.
    pub(crate) fn me_id(&self) -> UserId {
        self.me.as_ref().map_or(0, |me| me.user_id)
    }

    /// A user's name, or `#id` when it is not known.
    pub(crate) fn name(&self, user_id: UserId) -> String {
        self.names
            .get(&user_id)
            .cloned()
            .unwrap_or_else(|| format!("#{user_id}"))
    }

    /// What the list and the chat's title call a conversation.
    pub(crate) fn title(&self, conversation: &Conversation) -> String {
        match conversation.kind {
            ConversationKind::Direct if conversation.peer != 0 => self.name(conversation.peer),
            _ if !conversation.name.is_empty() => conversation.name.clone(),
            _ => format!("conversation {}", conversation.id),
        }
    }

    /// A conversation by id.
    pub(crate) fn conversation(&self, id: ConversationId) -> Option<&Conversation> {
        self.conversations.iter().find(|c| c.id == id)
    }

    fn conversation_mut(&mut self, id: ConversationId) -> Option<&mut Conversation> {
        self.conversations.iter_mut().find(|c| c.id == id)
    }

    /// The conversation with this id, added if new.
    fn entry(&mut self, id: ConversationId) -> &mut Conversation {
        let index = match self.conversations.iter().position(|c| c.id == id) {
            Some(index) => index,
            None => {
                self.conversations.push(Conversation::new(id));
                self.conversations.len() - 1
            }
        };
        &mut self.conversations[index]
    }

    /// The open conversation.
    pub(crate) fn open_conversation(&self) -> Option<&Conversation> {
        self.open.and_then(|id| self.conversation(id))
    }

    /// Who is typing in a conversation now.
    pub(crate) fn typing_in(&self, conversation_id: ConversationId) -> Vec<String> {
        let mut names: Vec<String> = self
            .typing
            .keys()
            .filter(|(c, _)| *c == conversation_id)
            .map(|(_, user)| self.name(*user))
            .collect();
        names.sort();
        names
    }

    fn sort_conversations(&mut self) {
        self.conversations
            .sort_by(|a, b| b.last_ts.cmp(&a.last_ts).then(b.id.cmp(&a.id)));
    }

    fn set_status(&mut self, text: impl Into<String>, error: bool) {
        self.status = Some(Status {
            text: text.into(),
            error,
        });
    }

    fn next_client_msg_id(&mut self) -> ClientMsgId {
        self.sent_count += 1;
        let mut id = [0; 16];
        id[..8].copy_from_slice(&self.seed);
        id[8..].copy_from_slice(&self.sent_count.to_be_bytes());
        id
    }

    // ------------------------------------------------------------ keys

    /// Handles one key press at `now_ms`.
    pub(crate) fn handle_key(&mut self, key: KeyEvent, now_ms: u64) -> Vec<Request> {
        self.now_ms = now_ms;
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('q')) {
            self.quit = true;
            return Vec::new();
        }
        match self.screen {
            Screen::Login => self.form_key(key),
            Screen::Connecting => Vec::new(),
            Screen::Main => self.main_key(key, now_ms),
        }
    }

    fn form_key(&mut self, key: KeyEvent) -> Vec<Request> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let form = &mut self.form;
        let field = match form.field {
            Field::Username => &mut form.username,
            Field::Password => &mut form.password,
        };
        match key.code {
            KeyCode::Char('r') if ctrl => form.register = !form.register,
            KeyCode::F(2) => form.register = !form.register,
            KeyCode::Tab | KeyCode::BackTab | KeyCode::Up | KeyCode::Down => {
                form.field = match form.field {
                    Field::Username => Field::Password,
                    Field::Password => Field::Username,
                };
            }
            KeyCode::Backspace => {
                field.pop();
            }
            KeyCode::Char(c) if !ctrl && field.chars().count() < INPUT_CHARS_MAX => field.push(c),
            KeyCode::Enter => return self.submit_form(),
            _ => {}
        }
        Vec::new()
    }

    fn submit_form(&mut self) -> Vec<Request> {
        let form = &mut self.form;
        if form.field == Field::Username && form.password.is_empty() {
            form.field = Field::Password;
            return Vec::new();
        }
        let username = form.username.trim().to_lowercase();
        if username.is_empty() || form.password.is_empty() {
            form.error = Some("type a username and a password".to_owned());
            return Vec::new();
        }
        let password = std::mem::take(&mut form.password);
        form.error = None;
        form.field = Field::Password;
        let credentials = if form.register {
            Credentials::Register { username, password }
        } else {
            Credentials::Login { username, password }
        };
        self.screen = Screen::Connecting;
        vec![Request::Start(credentials)]
    }

    fn main_key(&mut self, key: KeyEvent, now_ms: u64) -> Vec<Request> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::PageUp => return self.scroll_up(),
            KeyCode::PageDown => {
                if let Some(conversation) = self.open.and_then(|id| self.conversation_mut(id)) {
                    conversation.scroll = conversation.scroll.saturating_sub(PAGE_MESSAGES);
                }
                return Vec::new();
            }
            KeyCode::Char('n') if ctrl => return self.prefill("/open "),
            KeyCode::Char('g') if ctrl => return self.prefill("/group "),
            KeyCode::Tab | KeyCode::BackTab => {
                self.focus = match self.focus {
                    Focus::List => Focus::Input,
                    Focus::Input => Focus::List,
                };
                return Vec::new();
            }
            _ => {}
        }
        match self.focus {
            Focus::List => self.list_key(key),
            Focus::Input => self.input_key(key, now_ms),
        }
    }

    fn prefill(&mut self, text: &str) -> Vec<Request> {
        let requests = self.stop_typing();
        self.input = text.to_owned();
        self.focus = Focus::Input;
        requests
    }

    fn list_key(&mut self, key: KeyEvent) -> Vec<Request> {
        let index = self
            .selected
            .and_then(|id| self.conversations.iter().position(|c| c.id == id));
        let count = self.conversations.len();
        match key.code {
            KeyCode::Up | KeyCode::Char('k') if count > 0 => {
                let next = index.map_or(0, |i| i.saturating_sub(1));
                self.selected = Some(self.conversations[next].id);
            }
            KeyCode::Down | KeyCode::Char('j') if count > 0 => {
                let next = index.map_or(0, |i| (i + 1).min(count - 1));
                self.selected = Some(self.conversations[next].id);
            }
            KeyCode::Enter => {
                if let Some(id) = self.selected {
                    return self.open_id(id);
                }
            }
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('/') => {
                self.input = "/".to_owned();
                self.focus = Focus::Input;
            }
            _ => {}
        }
        Vec::new()
    }

    fn input_key(&mut self, key: KeyEvent, now_ms: u64) -> Vec<Request> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Esc => {
                self.focus = Focus::List;
                self.stop_typing()
            }
            KeyCode::Enter => self.submit_input(),
            KeyCode::Backspace => {
                self.input.pop();
                if self.input.is_empty() {
                    return self.stop_typing();
                }
                Vec::new()
            }
            KeyCode::Char('u') if ctrl => {
                self.input.clear();
                self.stop_typing()
            }
            KeyCode::Char(c) if !ctrl => {
                if self.input.chars().count() < INPUT_CHARS_MAX {
                    self.input.push(c);
                }
                self.typed(now_ms)
            }
            _ => Vec::new(),
        }
    }

    /// Typing indicators: `active` when typing starts and every few seconds while it goes on.
    fn typed(&mut self, now_ms: u64) -> Vec<Request> {
        self.typed_at_ms = now_ms;
        let Some(open) = self.open else {
            return Vec::new();
        };
        if self.input.starts_with('/') {
            return Vec::new();
        }
        if let Some((conversation, at)) = self.typing_stop_due {
            if conversation == open {
                // Typing again before the held-back stop went out: it never stopped.
                self.typing_stop_due = None;
                self.typing_sent = Some((conversation, at));
            }
        }
        let due = match self.typing_sent {
            Some((conversation, at)) => {
                conversation != open || now_ms.saturating_sub(at) >= TYPING_REPEAT_MS
            }
            None => true,
        };
        if !due {
            return Vec::new();
        }
        let mut requests = Vec::new();
        if let Some((conversation, _)) = self.typing_sent {
            if conversation != open {
                requests.push(Request::Typing {
                    conversation_id: conversation,
                    active: false,
                });
            }
        }
        self.typing_sent = Some((open, now_ms));
        requests.push(Request::Typing {
            conversation_id: open,
            active: true,
        });
        requests
    }

    /// `Typing{active: false}` for the conversation the user was typing in, now or, when the
    /// `true` went out less than [`TYPING_GAP_MS`] ago, from a later tick.
    fn stop_typing(&mut self) -> Vec<Request> {
        let Some((conversation_id, at)) = self.typing_sent.take() else {
            return Vec::new();
        };
        if self.now_ms.saturating_sub(at) < TYPING_GAP_MS {
            self.typing_stop_due = Some((conversation_id, at));
            return Vec::new();
        }
        vec![Request::Typing {
            conversation_id,
            active: false,
        }]
    }

    fn submit_input(&mut self) -> Vec<Request> {
        let text = std::mem::take(&mut self.input);
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return self.stop_typing();
        }
        if let Some(command) = trimmed.strip_prefix('/') {
            let mut requests = self.stop_typing();
            requests.extend(self.command(command));
            return requests;
        }
        let Some(open) = self.open else {
            self.set_status(
                "open a conversation first (Enter on the list, or /open USER)",
                true,
            );
            self.input = text;
            return Vec::new();
        };
        // The message itself ends the indicator for the other members, so no `false` is sent
        // (which could come too soon after the `true` and be refused).
        if self
            .typing_sent
            .is_some_and(|(conversation, _)| conversation == open)
        {
            self.typing_sent = None;
        }
        let mut requests = self.stop_typing();
        requests.push(self.send(open, trimmed.to_owned(), None));
        requests
    }

    fn send(
        &mut self,
        conversation_id: ConversationId,
        body: String,
        file: Option<PathBuf>,
    ) -> Request {
        let client_msg_id = self.next_client_msg_id();
        let conversation = self.entry(conversation_id);
        conversation.pending.push(Pending {
            client_msg_id,
            body: body.clone(),
            file: file.clone(),
            failed: None,
        });
        conversation.scroll = 0;
        Request::Send {
            conversation_id,
            client_msg_id,
            body,
            file,
        }
    }

    /// A `/command` typed in the input line.
    fn command(&mut self, command: &str) -> Vec<Request> {
        let (verb, rest) = command
            .split_once(char::is_whitespace)
            .map_or((command, ""), |(verb, rest)| (verb, rest.trim()));
        let group = self
            .open_conversation()
            .filter(|c| c.kind == ConversationKind::Group)
            .map(|c| c.id);
        match (verb, rest) {
            ("quit" | "q", _) => {
                self.quit = true;
                Vec::new()
            }
            ("help" | "h", _) => {
                self.set_status(HELP, false);
                Vec::new()
            }
            ("open" | "o", user) if !user.is_empty() => vec![Request::OpenDirect {
                username: user.to_lowercase(),
            }],
            ("group" | "g", rest) if !rest.is_empty() => {
                let mut words = rest.split([' ', ',']).filter(|w| !w.is_empty());
                let name = words.next().unwrap_or_default().to_owned();
                let members = words.map(str::to_lowercase).collect();
                vec![Request::CreateGroup { name, members }]
            }
            ("add", user) if !user.is_empty() => match group {
                Some(conversation_id) => vec![Request::AddMember {
                    conversation_id,
                    username: user.to_lowercase(),
                }],
                None => self.not_a_group(),
            },
            ("remove" | "kick", user) if !user.is_empty() => match group {
                Some(conversation_id) => vec![Request::RemoveMember {
                    conversation_id,
                    username: user.to_lowercase(),
                }],
                None => self.not_a_group(),
            },
            ("leave", _) => match group {
                Some(conversation_id) => vec![Request::LeaveGroup(conversation_id)],
                None => self.not_a_group(),
            },
            ("rename", name) if !name.is_empty() => match group {
                Some(conversation_id) => vec![Request::RenameGroup {
                    conversation_id,
                    name: name.to_owned(),
                }],
                None => self.not_a_group(),
            },
            ("members", _) => {
                let text = match self.open_conversation() {
                    Some(c) if !c.members.is_empty() => {
                        let names: Vec<String> = c
                            .members
                            .iter()
                            .map(|m| format!("{} ({})", self.name(m.user_id), role_name(m.role)))
                            .collect();
                        format!("members: {}", names.join(", "))
                    }
                    _ => "no members known; open a conversation first".to_owned(),
                };
                self.set_status(text, false);
                Vec::new()
            }
            ("file" | "send", path) if !path.is_empty() => match self.open {
                Some(open) => {
                    let path = PathBuf::from(path);
                    let body = path
                        .file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    vec![self.send(open, body, Some(path))]
                }
                None => {
                    self.set_status("open a conversation first", true);
                    Vec::new()
                }
            },
            ("save", rest) if !rest.is_empty() => self.save(rest),
            ("backup", rest) => self.backup(rest),
            ("retry", _) => self.retry(),
            _ => {
                self.set_status(
                    format!("unknown command /{command}; /help lists them"),
                    true,
                );
                Vec::new()
            }
        }
    }

    /// `/retry`: sends the open conversation's failed messages again, with the same
    /// `client_msg_id`s, so one that was stored after all is not stored twice.
    fn retry(&mut self) -> Vec<Request> {
        let Some(conversation) = self.open.and_then(|id| self.conversation_mut(id)) else {
            return Vec::new();
        };
        let conversation_id = conversation.id;
        let requests: Vec<Request> = conversation
            .pending
            .iter_mut()
            .filter_map(|pending| {
                pending.failed.take()?;
                Some(Request::Send {
                    conversation_id,
                    client_msg_id: pending.client_msg_id,
                    body: pending.body.clone(),
                    file: pending.file.clone(),
                })
            })
            .collect();
        if requests.is_empty() {
            self.set_status("nothing to retry", false);
        }
        requests
    }

    fn not_a_group(&mut self) -> Vec<Request> {
        self.set_status("open a group first", true);
        Vec::new()
    }

    /// `/save MEDIA_ID [PATH]`: the default path is the message's text when it names a file.
    fn save(&mut self, rest: &str) -> Vec<Request> {
        let mut words = rest.split_whitespace();
        let Some(media_id) = words.next().and_then(|w| w.parse::<u64>().ok()) else {
            self.set_status("usage: /save MEDIA_ID [PATH]", true);
            return Vec::new();
        };
        let path = match words.next() {
            Some(path) => PathBuf::from(path),
            None => {
                let named = self
                    .conversations
                    .iter()
                    .flat_map(|c| c.messages.values())
                    .find(|m| m.attachments.iter().any(|a| a.media_id == media_id))
                    .and_then(|m| {
                        // Only a plain file name: a message's text never picks a directory.
                        let name = std::path::Path::new(m.body.trim()).file_name()?;
                        (!m.body.trim().is_empty()).then(|| PathBuf::from(name))
                    });
                named.unwrap_or_else(|| PathBuf::from(format!("media-{media_id}")))
            }
        };
        self.set_status(
            format!("saving media {media_id} to {}…", path.display()),
            false,
        );
        vec![Request::SaveMedia { media_id, path }]
    }

    /// `/backup enable` and `/backup restore KEY`; a key that cannot be one is refused here.
    fn backup(&mut self, rest: &str) -> Vec<Request> {
        let (action, key) = rest
            .split_once(char::is_whitespace)
            .map_or((rest, ""), |(action, key)| (action, key.trim()));
        match action {
            "enable" if key.is_empty() => {
                self.set_status("enabling the key backup…", false);
                vec![Request::EnableBackup]
            }
            "restore" if net::is_recovery_key(key) => {
                self.set_status("restoring room keys from the key backup…", false);
                vec![Request::RestoreBackup {
                    recovery_key: key.to_owned(),
                }]
            }
            "restore" => {
                self.set_status(
                    format!("/backup restore KEY: {}", net::RECOVERY_KEY_FORMAT),
                    true,
                );
                Vec::new()
            }
            _ => {
                self.set_status("usage: /backup enable · /backup restore KEY", true);
                Vec::new()
            }
        }
    }

    /// Shows the recovery key of a new backup, the one time it is shown.
    fn backup_enabled(&mut self, enabled: BackupEnabled) {
        let replaced = if enabled.replaced {
            " The account's earlier backup was replaced."
        } else {
            ""
        };
        self.set_status(
            format!(
                "recovery key: {} · shown only now: write it down; /backup restore KEY needs it to \
                 read earlier encrypted messages on a new device.{replaced}",
                enabled.recovery_key
            ),
            false,
        );
    }

    /// After keys came from the backup: messages fetched before may open now, so every
    /// conversation is fetched again when shown, the open one at once.
    fn backup_restored(&mut self, restored: usize) -> Vec<Request> {
        let keys = if restored == 1 { "key" } else { "keys" };
        self.set_status(
            format!("restored {restored} room {keys} from the key backup"),
            false,
        );
        if restored == 0 {
            return Vec::new();
        }
        for conversation in &mut self.conversations {
            conversation.loaded = false;
        }
        let open = self.open;
        match open.and_then(|id| self.conversation_mut(id)) {
            Some(conversation) if !conversation.loading => {
                conversation.loading = true;
                vec![Request::LoadConversation(conversation.id)]
            }
            _ => Vec::new(),
        }
    }

    fn scroll_up(&mut self) -> Vec<Request> {
        let Some(conversation) = self.open.and_then(|id| self.conversation_mut(id)) else {
            return Vec::new();
        };
        let count = conversation.messages.len() + conversation.pending.len();
        conversation.scroll = (conversation.scroll + PAGE_MESSAGES).min(count.saturating_sub(1));
        // Near the oldest message held: fetch the page before it.
        let near_top = conversation.scroll + PAGE_MESSAGES >= count;
        if near_top && conversation.has_more && !conversation.loading {
            if let Some(&oldest) = conversation.messages.keys().next() {
                if oldest > 1 {
                    conversation.loading = true;
                    return vec![Request::History {
                        conversation_id: conversation.id,
                        before: oldest,
                    }];
                }
                conversation.has_more = false;
            }
        }
        Vec::new()
    }

    /// Shows a conversation: fetches it if needed, follows the peer's presence, marks it read.
    fn open_id(&mut self, id: ConversationId) -> Vec<Request> {
        let mut requests = self.stop_typing();
        self.open = Some(id);
        self.selected = Some(id);
        self.focus = Focus::Input;
        let conversation = self.entry(id);
        conversation.scroll = 0;
        if !conversation.loaded && !conversation.loading {
            conversation.loading = true;
            requests.push(Request::LoadConversation(id));
        }
        requests.extend(self.follow_peer(id));
        requests.extend(self.mark_read(id));
        requests
    }

    /// Subscribes to a direct conversation's peer's presence, once.
    fn follow_peer(&mut self, id: ConversationId) -> Vec<Request> {
        let me = self.me_id();
        let Some(peer) = self.conversation(id).map(|c| c.peer) else {
            return Vec::new();
        };
        if peer == 0 || peer == me || !self.followed.insert(peer) {
            return Vec::new();
        }
        vec![Request::SubscribePresence(vec![peer])]
    }

    fn mark_read(&mut self, id: ConversationId) -> Vec<Request> {
        let Some(conversation) = self.conversation_mut(id) else {
            return Vec::new();
        };
        conversation.unread = 0;
        if conversation.last_seq > conversation.read_seq {
            conversation.read_seq = conversation.last_seq;
            return vec![Request::MarkRead {
                conversation_id: id,
                up_to_seq: conversation.last_seq,
            }];
        }
        Vec::new()
    }

    // ------------------------------------------------------------ network reports

    /// Handles one report of the network worker at `now_ms`.
    pub(crate) fn handle_net(&mut self, event: NetEvent, now_ms: u64) -> Vec<Request> {
        self.now_ms = now_ms;
        let mentioned = mentioned_users(&event);
        let mut requests = self.net_event(event);
        requests.extend(self.ask_names(mentioned));
        requests
    }

    /// Asks the server for the names of the users among `ids` not known nor asked for yet.
    fn ask_names(&mut self, ids: Vec<UserId>) -> Option<Request> {
        let mut unknown: Vec<UserId> = ids
            .into_iter()
            .filter(|id| *id != 0 && !self.names.contains_key(id) && self.asked.insert(*id))
            .collect();
        unknown.sort_unstable();
        (!unknown.is_empty()).then_some(Request::Names(unknown))
    }

    fn net_event(&mut self, event: NetEvent) -> Vec<Request> {
        match event {
            NetEvent::Authenticated(auth) => {
                self.names.insert(auth.user_id, auth.username.clone());
                self.set_status(
                    format!("connected as {}; /help lists commands", auth.username),
                    false,
                );
                self.me = Some(auth);
                self.screen = Screen::Main;
                Vec::new()
            }
            NetEvent::AuthFailed { reason, refused } => {
                if self.resuming && !refused {
                    // The stored session may be fine: the server is out of reach. Logging in from
                    // the form would only create another device, so stop and say why.
                    self.fatal = Some(reason);
                    self.quit = true;
                } else {
                    self.screen = Screen::Login;
                    self.form.error = Some(reason);
                }
                self.resuming = false;
                Vec::new()
            }
            NetEvent::Conversations(list) => self.conversations_listed(list),
            NetEvent::Updates { updates, live } => self.apply_updates(updates, live),
            NetEvent::SkippedTo(head) => {
                self.cursor = self.cursor.max(head);
                self.acked = self.acked.max(head);
                Vec::new()
            }
            NetEvent::User(user) => {
                self.names.insert(user.user_id, user.username);
                Vec::new()
            }
            NetEvent::Conversation { info, open } => {
                let id = info.conversation_id;
                self.conversation_fetched(info);
                if open {
                    return self.open_id(id);
                }
                self.follow_peer(id)
            }
            NetEvent::History(page) => self.history(page),
            NetEvent::Sent(sent) => {
                self.sent(sent);
                Vec::new()
            }
            NetEvent::SendFailed {
                client_msg_id,
                reason,
            } => {
                for conversation in &mut self.conversations {
                    for pending in &mut conversation.pending {
                        if pending.client_msg_id == client_msg_id {
                            pending.failed = Some(reason.clone());
                        }
                    }
                }
                self.set_status(format!("not sent: {reason}"), true);
                Vec::new()
            }
            NetEvent::Presence(list) => {
                for presence in list {
                    self.presence.insert(presence.user_id, presence);
                }
                Vec::new()
            }
            NetEvent::Typing(event) => {
                self.typing_event(event, self.now_ms);
                Vec::new()
            }
            NetEvent::Encrypted(ids) => {
                self.encrypted.extend(ids);
                Vec::new()
            }
            NetEvent::BackupEnabled(enabled) => {
                self.backup_enabled(enabled);
                Vec::new()
            }
            NetEvent::BackupRestored(restored) => self.backup_restored(restored),
            NetEvent::Notice(text) => {
                self.set_status(text, false);
                Vec::new()
            }
            NetEvent::Error(text) => {
                self.set_status(text, true);
                Vec::new()
            }
            NetEvent::Disconnected(text) => {
                self.set_status(format!("disconnected: {text}"), true);
                Vec::new()
            }
        }
    }

    fn conversations_listed(&mut self, list: Vec<ConversationSummary>) -> Vec<Request> {
        let mut peers = Vec::new();
        for summary in list {
            let conversation = self.entry(summary.conversation_id);
            conversation.kind = summary.kind;
            conversation.name = summary.name;
            conversation.peer = summary.peer;
            if summary.last_seq >= conversation.last_seq {
                conversation.unread = summary.unread;
            }
            conversation.last_seq = conversation.last_seq.max(summary.last_seq);
            conversation.read_seq = conversation.read_seq.max(summary.read_seq);
            if let Some(message) = summary.last_message {
                conversation.last_ts = conversation.last_ts.max(message.ts);
                conversation.preview = Some(message);
            }
            if summary.peer != 0 {
                peers.push(summary.peer);
            }
        }
        self.sort_conversations();
        if self.selected.is_none() {
            self.selected = self.conversations.first().map(|c| c.id);
        }
        peers.sort_unstable();
        peers.dedup();
        peers.retain(|peer| self.followed.insert(*peer));
        if peers.is_empty() {
            Vec::new()
        } else {
            vec![Request::SubscribePresence(peers)]
        }
    }

    fn conversation_fetched(&mut self, info: ConversationInfo) {
        let me = self.me_id();
        let conversation = self.entry(info.conversation_id);
        conversation.kind = info.kind;
        conversation.name = info.name;
        // A reply made before messages this client already applied has a stale count.
        if info.last_seq >= conversation.last_seq {
            conversation.unread = info.unread;
        }
        conversation.last_seq = conversation.last_seq.max(info.last_seq);
        conversation.read_seq = conversation.read_seq.max(info.read_seq);
        if info.kind == ConversationKind::Direct {
            if let Some(peer) = info.members.iter().find(|m| m.user_id != me) {
                conversation.peer = peer.user_id;
            }
        }
        conversation.members = info.members;
        conversation.left = false;
        self.sort_conversations();
    }

    fn history(&mut self, page: HistoryPage) -> Vec<Request> {
        let open = self.open;
        let conversation = self.entry(page.conversation_id);
        conversation.loading = false;
        conversation.loaded = true;
        conversation.has_more = page.has_more;
        for message in page.messages {
            conversation.last_seq = conversation.last_seq.max(message.seq);
            conversation.last_ts = conversation.last_ts.max(message.ts);
            conversation.messages.insert(message.seq, message);
        }
        if conversation.preview.is_none() {
            conversation.preview = conversation.messages.values().next_back().cloned();
        }
        if open == Some(page.conversation_id) {
            return self.mark_read(page.conversation_id);
        }
        Vec::new()
    }

    fn sent(&mut self, sent: Sent) {
        let me = self.me_id();
        let device = self.me.as_ref().map_or(0, |m| m.device_id);
        let conversation = self.entry(sent.conversation_id);
        let Some(index) = conversation
            .pending
            .iter()
            .position(|p| p.client_msg_id == sent.client_msg_id)
        else {
            return;
        };
        let pending = conversation.pending.remove(index);
        let message = Message {
            conversation_id: sent.conversation_id,
            seq: sent.seq,
            message_id: sent.message_id,
            sender: me,
            sender_device: device,
            ts: sent.ts,
            client_msg_id: sent.client_msg_id,
            body: pending.body,
            attachments: Vec::new(),
        };
        conversation.last_seq = conversation.last_seq.max(sent.seq);
        conversation.last_ts = conversation.last_ts.max(sent.ts);
        conversation.read_seq = conversation.read_seq.max(sent.seq);
        // The update, when it came first, has the attachments: keep it.
        let stored = conversation.messages.entry(sent.seq).or_insert(message);
        conversation.preview = Some(stored.clone());
        self.sort_conversations();
    }

    fn typing_event(&mut self, event: TypingEvent, now_ms: u64) {
        let key = (event.conversation_id, event.user_id);
        if event.active {
            self.typing.insert(key, now_ms + TYPING_SHOWN_MS);
        } else {
            self.typing.remove(&key);
        }
    }

    fn apply_updates(&mut self, updates: Vec<Update>, live: bool) -> Vec<Request> {
        let mut requests = Vec::new();
        if !live {
            self.resyncing = false;
        }
        for update in updates {
            if update.user_seq <= self.cursor {
                continue;
            }
            if live && update.user_seq > self.cursor + 1 {
                // A gap: ask again from the cursor; the page brings this update too.
                if !self.resyncing {
                    self.resyncing = true;
                    requests.push(Request::Resync(self.cursor));
                }
                continue;
            }
            self.cursor = update.user_seq;
            requests.extend(self.apply(update.kind, live));
        }
        self.sort_conversations();
        requests
    }

    fn apply(&mut self, kind: UpdateKind, live: bool) -> Vec<Request> {
        let me = self.me_id();
        let open = self.open;
        match kind {
            UpdateKind::Message(message) => return self.message(message, live),
            UpdateKind::Receipt(receipt) => {
                let conversation = self.entry(receipt.conversation_id);
                if receipt.user_id == me {
                    if receipt.kind == ReceiptKind::Read {
                        conversation.read_seq = conversation.read_seq.max(receipt.up_to_seq);
                        conversation.recount_unread();
                    }
                } else {
                    let marks = conversation.receipts.entry(receipt.user_id).or_default();
                    match receipt.kind {
                        ReceiptKind::Delivered => marks.0 = marks.0.max(receipt.up_to_seq),
                        ReceiptKind::Read => marks.1 = marks.1.max(receipt.up_to_seq),
                    }
                }
            }
            UpdateKind::GroupCreated(created) => {
                let conversation = self.entry(created.conversation_id);
                conversation.kind = ConversationKind::Group;
                conversation.name = created.name;
                conversation.members = created.members;
                conversation.left = false;
                conversation.last_ts = conversation.last_ts.max(created.ts);
            }
            UpdateKind::MembersAdded(added) => {
                let conversation = self.entry(added.conversation_id);
                conversation.kind = ConversationKind::Group;
                for user in &added.members {
                    conversation.upsert_member(*user, Role::Member);
                }
                if added.members.contains(&me) {
                    // Added to a group: fetch its name and members.
                    conversation.left = false;
                    conversation.last_ts = conversation.last_ts.max(added.ts);
                    if live && !conversation.loading {
                        conversation.loading = true;
                        return vec![Request::LoadConversation(added.conversation_id)];
                    }
                }
            }
            UpdateKind::MemberRemoved(removed) => {
                let conversation = self.entry(removed.conversation_id);
                conversation
                    .members
                    .retain(|m| m.user_id != removed.user_id);
                conversation.receipts.remove(&removed.user_id);
                if removed.user_id == me {
                    conversation.left = true;
                    if open == Some(removed.conversation_id) {
                        self.set_status("you are no longer a member of this group", true);
                    }
                }
            }
            UpdateKind::GroupRenamed(renamed) => {
                self.entry(renamed.conversation_id).name = renamed.name;
            }
            UpdateKind::RoleChanged(changed) => {
                self.entry(changed.conversation_id)
                    .upsert_member(changed.user_id, changed.role);
            }
            _ => {}
        }
        Vec::new()
    }

    fn message(&mut self, message: Message, live: bool) -> Vec<Request> {
        let me = self.me_id();
        let is_open = self.open == Some(message.conversation_id) && self.screen == Screen::Main;
        let known = self.conversation(message.conversation_id).is_some();
        let conversation = self.entry(message.conversation_id);
        let mut requests = Vec::new();
        if !known && live {
            // A conversation this client has not seen (a new direct chat): fetch its state.
            conversation.loading = true;
            requests.push(Request::LoadConversation(message.conversation_id));
        }
        if message.sender == me {
            conversation
                .pending
                .retain(|p| p.client_msg_id != message.client_msg_id);
        }
        let new = message.seq > conversation.last_seq;
        conversation.last_seq = conversation.last_seq.max(message.seq);
        conversation.last_ts = conversation.last_ts.max(message.ts);
        if message.sender == me {
            // As the server counts it, a user who writes has read what came before.
            conversation.read_seq = conversation.read_seq.max(message.seq);
            conversation.recount_unread();
        } else if new && message.seq > conversation.read_seq {
            conversation.unread += 1;
        }
        if message.sender != me {
            // A message ends its sender's typing.
            self.typing
                .remove(&(message.conversation_id, message.sender));
        }
        let conversation = self.entry(message.conversation_id);
        conversation.preview = Some(message.clone());
        conversation.messages.insert(message.seq, message);
        if is_open {
            requests.extend(self.mark_read(self.open.unwrap_or_default()));
        }
        requests
    }

    // ------------------------------------------------------------ time

    /// Expires typing indicators, stops the user's own after a pause, and acknowledges updates in
    /// batches.
    pub(crate) fn tick(&mut self, now_ms: u64) -> Vec<Request> {
        self.now_ms = now_ms;
        self.typing.retain(|_, until| *until > now_ms);
        let mut requests = Vec::new();
        if let Some((conversation_id, at)) = self.typing_stop_due {
            if now_ms.saturating_sub(at) >= TYPING_GAP_MS {
                self.typing_stop_due = None;
                requests.push(Request::Typing {
                    conversation_id,
                    active: false,
                });
            }
        }
        if self.typing_sent.is_some() && now_ms.saturating_sub(self.typed_at_ms) >= TYPING_IDLE_MS {
            requests.extend(self.stop_typing());
        }
        if self.cursor > self.acked && now_ms.saturating_sub(self.acked_at_ms) >= ACK_INTERVAL_MS {
            self.acked = self.cursor;
            self.acked_at_ms = now_ms;
            requests.push(Request::Ack(self.cursor));
        }
        requests
    }
}

/// What `/help` shows.
pub(crate) const HELP: &str = "/open USER · /group NAME USER… · /add USER · /remove USER · \
/rename NAME · /leave · /members · /file PATH · /save MEDIA_ID [PATH] · /backup enable · \
/backup restore KEY · /retry · /quit";

/// A role's name.
pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Member => "member",
        Role::Admin => "admin",
        Role::Owner => "owner",
    }
}

#[cfg(test)]
mod tests;

/// The users a report of the network worker mentions by id, whose names the screen may show.
fn mentioned_users(event: &NetEvent) -> Vec<UserId> {
    let mut ids = Vec::new();
    match event {
        NetEvent::Conversations(list) => {
            for summary in list {
                ids.push(summary.peer);
                ids.extend(summary.last_message.as_ref().map(|m| m.sender));
            }
        }
        NetEvent::Updates { updates, .. } => {
            for update in updates {
                match &update.kind {
                    UpdateKind::Message(message) => ids.push(message.sender),
                    UpdateKind::Receipt(receipt) => ids.push(receipt.user_id),
                    UpdateKind::GroupCreated(created) => {
                        ids.push(created.actor);
                        ids.extend(created.members.iter().map(|m| m.user_id));
                    }
                    UpdateKind::MembersAdded(added) => {
                        ids.push(added.actor);
                        ids.extend(added.members.iter().copied());
                    }
                    UpdateKind::MemberRemoved(removed) => {
                        ids.extend([removed.actor, removed.user_id])
                    }
                    UpdateKind::GroupRenamed(renamed) => ids.push(renamed.actor),
                    UpdateKind::RoleChanged(changed) => {
                        ids.extend([changed.actor, changed.user_id])
                    }
                    _ => {}
                }
            }
        }
        NetEvent::Conversation { info, .. } => ids.extend(info.members.iter().map(|m| m.user_id)),
        NetEvent::History(page) => ids.extend(page.messages.iter().map(|m| m.sender)),
        NetEvent::Typing(typing) => ids.push(typing.user_id),
        _ => {}
    }
    ids
}
