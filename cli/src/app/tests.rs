//! Unit tests of the interactive client's state machine: keys, network reports and ticks in,
//! requests and screen state out.

use super::*;
use tern_protocol::types::Attachment;
use tern_protocol::update::{Receipt, Skipped};

const ME: UserId = 1;
const BOB: UserId = 2;
const CAROL: UserId = 3;
const CHAT: ConversationId = 100;
const GROUP: ConversationId = 200;

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn ctrl(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
}

fn type_text(app: &mut App, text: &str, now_ms: u64) -> Vec<Request> {
    text.chars()
        .flat_map(|c| app.handle_key(key(KeyCode::Char(c)), now_ms))
        .collect()
}

fn summary(id: ConversationId, peer: UserId, last_seq: u64, unread: u64) -> ConversationSummary {
    ConversationSummary {
        conversation_id: id,
        kind: ConversationKind::Direct,
        peer,
        last_seq,
        read_seq: last_seq - unread,
        unread,
        ..ConversationSummary::default()
    }
}

fn message(conversation_id: ConversationId, seq: u64, sender: UserId, body: &str) -> Message {
    Message {
        conversation_id,
        seq,
        message_id: 1_000 + seq,
        sender,
        sender_device: 1,
        ts: 1_000 * seq,
        body: body.to_owned(),
        ..Message::default()
    }
}

fn update(user_seq: u64, kind: UpdateKind) -> Update {
    Update { user_seq, kind }
}

fn receipt(
    conversation_id: ConversationId,
    user_id: UserId,
    kind: ReceiptKind,
    up_to_seq: u64,
) -> UpdateKind {
    UpdateKind::Receipt(Receipt {
        conversation_id,
        user_id,
        kind,
        up_to_seq,
        ts: 0,
    })
}

/// An app logged in as ME with a direct chat with BOB (2 messages, 1 unread).
fn logged_in() -> App {
    let mut app = App::new([7; 8], HashMap::from([(BOB, "bob".to_owned())]));
    app.handle_net(
        NetEvent::Authenticated(Authenticated {
            user_id: ME,
            device_id: 1,
            username: "alice".to_owned(),
            token: None,
        }),
        0,
    );
    let requests = app.handle_net(NetEvent::Conversations(vec![summary(CHAT, BOB, 2, 1)]), 0);
    assert_eq!(requests, [Request::SubscribePresence(vec![BOB])]);
    app
}

fn live(app: &mut App, user_seq: u64, kind: UpdateKind) -> Vec<Request> {
    app.handle_net(
        NetEvent::Updates {
            updates: vec![update(user_seq, kind)],
            live: true,
        },
        0,
    )
}

// The form: typing, Tab between fields, F2 to register; Enter submits and shows the waiting
// screen; a failure brings the form back with the reason and an empty password.
#[test]
fn form_submits_credentials() {
    let mut app = App::new([0; 8], HashMap::new());
    assert_eq!(app.screen, Screen::Login);
    assert!(app.handle_key(key(KeyCode::Enter), 0).is_empty());
    assert_eq!(
        app.form.field,
        Field::Password,
        "Enter on the username moves on"
    );
    app.handle_key(key(KeyCode::Tab), 0);
    type_text(&mut app, "Alice", 0);
    app.handle_key(key(KeyCode::Tab), 0);
    type_text(&mut app, "secret123", 0);
    app.handle_key(key(KeyCode::F(2)), 0);
    let requests = app.handle_key(key(KeyCode::Enter), 0);
    assert_eq!(
        requests,
        [Request::Start(Credentials::Register {
            username: "alice".to_owned(),
            password: "secret123".to_owned(),
        })]
    );
    assert_eq!(app.screen, Screen::Connecting);
    app.handle_net(
        NetEvent::AuthFailed {
            reason: "USERNAME_TAKEN: taken".to_owned(),
            refused: true,
        },
        0,
    );
    assert_eq!(app.screen, Screen::Login);
    assert_eq!(app.form.error.as_deref(), Some("USERNAME_TAKEN: taken"));
    assert!(app.form.password.is_empty());
    assert!(app.handle_key(ctrl('c'), 0).is_empty());
    assert!(app.quit);
}

// Unread counts: the list's count, plus new messages from others; replayed messages the count
// already includes do not add; opening marks read; a message in the open chat is read at once;
// a read receipt from the user's other device lowers the count.
#[test]
fn unread_counts() {
    let mut app = logged_in();
    let unread = |app: &App| app.conversation(CHAT).map(|c| c.unread);
    assert_eq!(unread(&app), Some(1));

    // Catch-up replays seq 2, which the list already counted.
    app.handle_net(
        NetEvent::Updates {
            updates: vec![update(1, UpdateKind::Message(message(CHAT, 2, BOB, "old")))],
            live: false,
        },
        0,
    );
    assert_eq!(unread(&app), Some(1));
    live(
        &mut app,
        2,
        UpdateKind::Message(message(CHAT, 3, BOB, "new")),
    );
    assert_eq!(unread(&app), Some(2));
    // Another device read up to seq 2: one left.
    live(&mut app, 3, receipt(CHAT, ME, ReceiptKind::Read, 2));
    assert_eq!(unread(&app), Some(1));
    // Writing reads what came before, as the server counts it.
    live(
        &mut app,
        4,
        UpdateKind::Message(message(CHAT, 4, ME, "mine")),
    );
    assert_eq!(unread(&app), Some(0));
    live(
        &mut app,
        5,
        UpdateKind::Message(message(CHAT, 5, BOB, "later")),
    );
    assert_eq!(unread(&app), Some(1));

    app.selected = Some(CHAT);
    let requests = app.handle_key(key(KeyCode::Enter), 0);
    assert!(
        requests.contains(&Request::LoadConversation(CHAT)),
        "{requests:?}"
    );
    assert!(requests.contains(&Request::MarkRead {
        conversation_id: CHAT,
        up_to_seq: 5
    }));
    assert_eq!(unread(&app), Some(0));

    let requests = live(
        &mut app,
        6,
        UpdateKind::Message(message(CHAT, 6, BOB, "while open")),
    );
    assert_eq!(
        requests,
        [Request::MarkRead {
            conversation_id: CHAT,
            up_to_seq: 6
        }]
    );
    assert_eq!(unread(&app), Some(0));
}

// A message's ticks: pending until Sent, then sent, delivered and read as the peer's
// watermarks pass it; a receipt never lowers a watermark. In a group every other member must
// be covered.
#[test]
fn ticks_follow_receipts() {
    let mut app = logged_in();
    app.open = Some(CHAT);
    app.focus = Focus::Input;
    type_text(&mut app, "hello", 0);
    let requests = app.handle_key(key(KeyCode::Enter), 0);
    let Some(Request::Send {
        client_msg_id,
        body,
        conversation_id,
        file: None,
    }) = requests.last().cloned()
    else {
        panic!("no Send in {requests:?}");
    };
    assert_eq!((conversation_id, body.as_str()), (CHAT, "hello"));
    assert_eq!(&client_msg_id[..8], &[7; 8], "ids come from the seed");
    let chat = app.conversation(CHAT).unwrap();
    assert_eq!(chat.pending.len(), 1);

    app.handle_net(
        NetEvent::Sent(Sent {
            conversation_id: CHAT,
            client_msg_id,
            seq: 3,
            message_id: 9,
            ts: 5,
        }),
        0,
    );
    let tick = |app: &App| app.conversation(CHAT).unwrap().tick(ME, 3);
    assert!(app.conversation(CHAT).unwrap().pending.is_empty());
    assert_eq!(tick(&app), Tick::Sent);
    live(&mut app, 1, receipt(CHAT, BOB, ReceiptKind::Delivered, 3));
    assert_eq!(tick(&app), Tick::Delivered);
    live(&mut app, 2, receipt(CHAT, BOB, ReceiptKind::Read, 3));
    assert_eq!(tick(&app), Tick::Read);
    live(&mut app, 3, receipt(CHAT, BOB, ReceiptKind::Read, 2));
    assert_eq!(tick(&app), Tick::Read, "watermarks never go down");

    // A group of three: read by one, delivered to the other.
    app.handle_net(
        NetEvent::Conversation {
            info: ConversationInfo {
                conversation_id: GROUP,
                kind: ConversationKind::Group,
                name: "team".to_owned(),
                members: vec![
                    Member {
                        user_id: ME,
                        role: Role::Owner,
                    },
                    Member {
                        user_id: BOB,
                        role: Role::Member,
                    },
                    Member {
                        user_id: CAROL,
                        role: Role::Member,
                    },
                ],
                ..ConversationInfo::default()
            },
            open: false,
        },
        0,
    );
    live(
        &mut app,
        4,
        UpdateKind::Message(message(GROUP, 1, ME, "hi all")),
    );
    live(&mut app, 5, receipt(GROUP, BOB, ReceiptKind::Read, 1));
    let group_tick = |app: &App| app.conversation(GROUP).unwrap().tick(ME, 1);
    assert_eq!(group_tick(&app), Tick::Sent);
    live(
        &mut app,
        6,
        receipt(GROUP, CAROL, ReceiptKind::Delivered, 1),
    );
    assert_eq!(group_tick(&app), Tick::Delivered);
    live(&mut app, 7, receipt(GROUP, CAROL, ReceiptKind::Read, 1));
    assert_eq!(group_tick(&app), Tick::Read);
}

// One message reaching the client three ways (its Sent, its update, a history page) is held
// once; an update at or below the cursor is ignored; a gap asks for a Sync from the cursor,
// once.
#[test]
fn messages_and_updates_are_applied_once() {
    let mut app = logged_in();
    app.open = Some(CHAT);
    app.focus = Focus::Input;
    type_text(&mut app, "once", 0);
    let Some(Request::Send { client_msg_id, .. }) = app.handle_key(key(KeyCode::Enter), 0).pop()
    else {
        panic!("no Send");
    };
    let mut stored = message(CHAT, 3, ME, "once");
    stored.client_msg_id = client_msg_id;
    // The update first: it replaces the pending message.
    live(&mut app, 1, UpdateKind::Message(stored.clone()));
    assert!(app.conversation(CHAT).unwrap().pending.is_empty());
    app.handle_net(
        NetEvent::Sent(Sent {
            conversation_id: CHAT,
            client_msg_id,
            seq: 3,
            message_id: stored.message_id,
            ts: stored.ts,
        }),
        0,
    );
    app.handle_net(
        NetEvent::History(HistoryPage {
            conversation_id: CHAT,
            messages: vec![message(CHAT, 2, BOB, "before"), stored.clone()],
            has_more: true,
            after: None,
        }),
        0,
    );
    live(&mut app, 1, UpdateKind::Message(stored));
    let chat = app.conversation(CHAT).unwrap();
    let bodies: Vec<&str> = chat.messages.values().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["before", "once"]);
    assert!(chat.pending.is_empty());

    // user_seq 2 is missing: one Resync from the cursor, however many updates follow.
    let requests = live(&mut app, 3, receipt(CHAT, BOB, ReceiptKind::Read, 3));
    assert_eq!(requests, [Request::Resync(1)]);
    assert!(live(&mut app, 4, receipt(CHAT, BOB, ReceiptKind::Read, 3)).is_empty());
    assert_eq!(app.conversation(CHAT).unwrap().tick(ME, 3), Tick::Sent);
    // The catch-up page fills the gap.
    app.handle_net(
        NetEvent::Updates {
            updates: vec![
                update(2, receipt(CHAT, BOB, ReceiptKind::Delivered, 3)),
                update(3, receipt(CHAT, BOB, ReceiptKind::Read, 3)),
            ],
            live: false,
        },
        0,
    );
    assert_eq!(app.conversation(CHAT).unwrap().tick(ME, 3), Tick::Read);
}

// Typing: `true` at the first key and again after five seconds of typing, not on every key;
// a stop that comes too soon after the `true` waits for a tick; sending needs no `false`;
// others' indicators show until their message or ten seconds.
#[test]
fn typing_indicators() {
    let mut app = logged_in();
    app.open = Some(CHAT);
    app.focus = Focus::Input;
    let active = Request::Typing {
        conversation_id: CHAT,
        active: true,
    };
    let stopped = Request::Typing {
        conversation_id: CHAT,
        active: false,
    };
    assert_eq!(
        type_text(&mut app, "he", 1_000),
        std::slice::from_ref(&active)
    );
    assert!(type_text(&mut app, "llo", 3_000).is_empty());
    assert_eq!(
        type_text(&mut app, "!", 6_000),
        std::slice::from_ref(&active)
    );
    // Esc 100 ms after the repeat: held back, sent by the tick once 600 ms have passed.
    assert!(app.handle_key(key(KeyCode::Esc), 6_100).is_empty());
    assert!(app.tick(6_200).iter().all(|r| *r != stopped));
    assert!(app.tick(6_700).contains(&stopped));
    assert!(!app.tick(7_000).contains(&stopped), "sent once");

    // Typing then sending: the message ends the indicator.
    app.focus = Focus::Input;
    app.input.clear();
    assert_eq!(type_text(&mut app, "x", 10_000), [active]);
    let requests = app.handle_key(key(KeyCode::Enter), 10_100);
    assert!(
        matches!(requests.as_slice(), [Request::Send { .. }]),
        "{requests:?}"
    );
    assert!(!app.tick(20_000).contains(&stopped));

    // Bob types: shown, and gone after his message or ten seconds.
    let bob_types = |active| {
        NetEvent::Typing(TypingEvent {
            conversation_id: CHAT,
            user_id: BOB,
            active,
        })
    };
    app.handle_net(bob_types(true), 30_000);
    assert_eq!(app.typing_in(CHAT), ["bob"]);
    live(
        &mut app,
        1,
        UpdateKind::Message(message(CHAT, 3, BOB, "done")),
    );
    assert!(app.typing_in(CHAT).is_empty());
    app.handle_net(bob_types(true), 40_000);
    app.tick(49_000);
    assert_eq!(app.typing_in(CHAT), ["bob"]);
    app.tick(50_000);
    assert!(app.typing_in(CHAT).is_empty());
}

// Acknowledgements go out in batches from ticks, at most once a second, only for new updates.
#[test]
fn acknowledgements_are_batched() {
    let mut app = logged_in();
    live(&mut app, 1, UpdateKind::Message(message(CHAT, 3, BOB, "a")));
    live(&mut app, 2, UpdateKind::Message(message(CHAT, 4, BOB, "b")));
    assert_eq!(app.tick(5_000), [Request::Ack(2)]);
    live(&mut app, 3, UpdateKind::Message(message(CHAT, 5, BOB, "c")));
    assert!(app.tick(5_500).is_empty());
    assert_eq!(app.tick(6_000), [Request::Ack(3)]);
    assert!(app.tick(9_000).is_empty());
}

// A Skipped update (spec §10.9.9) moves the cursor like any other and shows nothing: the unread
// count stays, the update after it is no gap, and the acknowledgement covers it.
#[test]
fn skipped_updates_only_move_the_cursor() {
    let mut app = logged_in();
    let unread = |app: &App| app.conversation(CHAT).map(|c| c.unread);
    live(&mut app, 1, UpdateKind::Message(message(CHAT, 3, BOB, "a")));
    assert_eq!(unread(&app), Some(2));
    assert!(live(&mut app, 2, UpdateKind::Skipped(Skipped {})).is_empty());
    assert_eq!(unread(&app), Some(2));
    assert_eq!(app.tick(5_000), [Request::Ack(2)]);
    let requests = live(&mut app, 3, receipt(CHAT, BOB, ReceiptKind::Read, 3));
    assert!(
        !requests.iter().any(|r| matches!(r, Request::Resync(_))),
        "{requests:?}"
    );
    assert_eq!(app.tick(6_000), [Request::Ack(3)]);
}

// PageUp scrolls and, near the oldest message held, asks for the page before it; not twice
// while one is loading, and not past the first message.
#[test]
fn page_up_loads_older_history() {
    let mut app = logged_in();
    app.open = Some(CHAT);
    let messages = (50..=60).map(|seq| message(CHAT, seq, BOB, "m")).collect();
    app.handle_net(
        NetEvent::History(HistoryPage {
            conversation_id: CHAT,
            messages,
            has_more: true,
            after: None,
        }),
        0,
    );
    let requests = app.handle_key(key(KeyCode::PageUp), 0);
    assert_eq!(
        requests,
        [Request::History {
            conversation_id: CHAT,
            before: 50
        }]
    );
    assert_eq!(app.conversation(CHAT).unwrap().scroll, PAGE_MESSAGES);
    assert!(
        app.handle_key(key(KeyCode::PageUp), 0).is_empty(),
        "already loading"
    );
    app.handle_net(
        NetEvent::History(HistoryPage {
            conversation_id: CHAT,
            messages: (1..50).map(|seq| message(CHAT, seq, BOB, "m")).collect(),
            has_more: false,
            after: None,
        }),
        0,
    );
    assert_eq!(app.conversation(CHAT).unwrap().messages.len(), 60);
    assert!(
        app.handle_key(key(KeyCode::PageUp), 0).is_empty(),
        "nothing older"
    );
    app.handle_key(key(KeyCode::PageDown), 0);
    app.handle_key(key(KeyCode::PageDown), 0);
    app.handle_key(key(KeyCode::PageDown), 0);
    assert_eq!(app.conversation(CHAT).unwrap().scroll, 0);
}

// Slash commands turn into requests, with the conversation they need.
#[test]
fn slash_commands() {
    let mut app = logged_in();
    app.handle_key(ctrl('n'), 0);
    assert_eq!(app.input, "/open ");
    assert_eq!(app.focus, Focus::Input);
    let requests = {
        type_text(&mut app, "Bob", 0);
        app.handle_key(key(KeyCode::Enter), 0)
    };
    assert_eq!(
        requests,
        [Request::OpenDirect {
            username: "bob".to_owned()
        }]
    );

    app.open = Some(CHAT);
    type_text(&mut app, "/add carol", 0);
    assert!(app.handle_key(key(KeyCode::Enter), 0).is_empty());
    assert!(app.status.as_ref().is_some_and(|s| s.error), "not a group");

    type_text(&mut app, "/leave", 0);
    assert!(
        app.handle_key(key(KeyCode::Enter), 0).is_empty(),
        "not a group"
    );

    type_text(&mut app, "/group team carol,dave", 0);
    assert_eq!(
        app.handle_key(key(KeyCode::Enter), 0),
        [Request::CreateGroup {
            name: "team".to_owned(),
            members: vec!["carol".to_owned(), "dave".to_owned()],
        }]
    );

    // In a group: rename and leave.
    live(
        &mut app,
        1,
        UpdateKind::GroupCreated(tern_protocol::update::GroupCreated {
            conversation_id: GROUP,
            actor: ME,
            ts: 1,
            name: "team".to_owned(),
            members: vec![Member {
                user_id: ME,
                role: Role::Owner,
            }],
            encrypted: false,
        }),
    );
    app.open = Some(GROUP);
    type_text(&mut app, "/rename the team", 0);
    assert_eq!(
        app.handle_key(key(KeyCode::Enter), 0),
        [Request::RenameGroup {
            conversation_id: GROUP,
            name: "the team".to_owned(),
        }]
    );
    type_text(&mut app, "/leave", 0);
    assert_eq!(
        app.handle_key(key(KeyCode::Enter), 0),
        [Request::LeaveGroup(GROUP)]
    );
    app.open = Some(CHAT);

    // /save names the file after the message that carries the attachment.
    let mut with_file = message(CHAT, 3, BOB, "../photo.jpg");
    with_file.attachments = vec![Attachment {
        media_id: 77,
        size: 10,
        mime: "image/jpeg".to_owned(),
    }];
    live(&mut app, 2, UpdateKind::Message(with_file));
    type_text(&mut app, "/save 77", 0);
    assert_eq!(
        app.handle_key(key(KeyCode::Enter), 0),
        [Request::SaveMedia {
            media_id: 77,
            path: PathBuf::from("photo.jpg"),
        }]
    );
    type_text(&mut app, "/file /tmp/x.txt", 0);
    let requests = app.handle_key(key(KeyCode::Enter), 0);
    assert!(
        matches!(&requests[..], [Request::Send { body, file: Some(_), .. }] if body == "x.txt"),
        "{requests:?}"
    );
    type_text(&mut app, "/quit", 0);
    app.handle_key(key(KeyCode::Enter), 0);
    assert!(app.quit);
}

// `/backup enable` and `/backup restore KEY` become requests, a key of the wrong shape is refused
// without one, the recovery key is shown on the status line, and keys restored fetch the open
// conversation again so that its messages open.
#[test]
fn backup_commands() {
    let recovery =
        "0123 4567 89ab cdef 0123 4567 89ab cdef 0123 4567 89ab cdef 0123 4567 89ab cdef";
    let mut app = logged_in();
    app.focus = Focus::Input;
    type_text(&mut app, "/backup enable", 0);
    assert_eq!(
        app.handle_key(key(KeyCode::Enter), 0),
        [Request::EnableBackup]
    );
    assert!(app.status.as_ref().is_some_and(|s| !s.error));

    app.handle_net(
        NetEvent::BackupEnabled(BackupEnabled {
            recovery_key: recovery.to_owned(),
            replaced: false,
        }),
        0,
    );
    let status = app.status.clone().unwrap();
    assert!(!status.error);
    assert!(status.text.contains(recovery), "{}", status.text);
    assert!(status.text.contains("shown only now"), "{}", status.text);

    type_text(&mut app, &format!("/backup restore {recovery}"), 0);
    assert_eq!(
        app.handle_key(key(KeyCode::Enter), 0),
        [Request::RestoreBackup {
            recovery_key: recovery.to_owned()
        }]
    );
    // Without the spaces too.
    let compact = recovery.replace(' ', "");
    type_text(&mut app, &format!("/backup restore {compact}"), 0);
    assert_eq!(
        app.handle_key(key(KeyCode::Enter), 0),
        [Request::RestoreBackup {
            recovery_key: compact
        }]
    );

    for wrong in [
        "/backup restore",
        "/backup restore 0123",
        &format!("/backup restore {}", recovery.replace('a', "x")),
        "/backup",
        "/backup now",
        "/backup enable please",
    ] {
        type_text(&mut app, wrong, 0);
        assert!(app.handle_key(key(KeyCode::Enter), 0).is_empty(), "{wrong}");
        assert!(app.status.as_ref().is_some_and(|s| s.error), "{wrong}");
    }

    // Keys restored: the open conversation is fetched again, the others when opened.
    app.open = Some(CHAT);
    app.conversation_mut(CHAT).unwrap().loaded = true;
    assert_eq!(
        app.handle_net(NetEvent::BackupRestored(3), 0),
        [Request::LoadConversation(CHAT)]
    );
    let status = app.status.clone().unwrap();
    assert!(!status.error);
    assert_eq!(status.text, "restored 3 room keys from the key backup");
    assert!(app.conversations.iter().all(|c| !c.loaded));
    assert!(
        app.handle_net(NetEvent::BackupRestored(0), 0).is_empty(),
        "nothing new, nothing to fetch"
    );
}

// A message the server refused is marked failed; `/retry` sends it again with the same
// `client_msg_id`, so a message that was stored after all is not stored twice.
#[test]
fn failed_messages_are_retried_with_their_id() {
    let mut app = logged_in();
    app.open = Some(CHAT);
    app.focus = Focus::Input;
    type_text(&mut app, "lost?", 0);
    let Some(Request::Send { client_msg_id, .. }) = app.handle_key(key(KeyCode::Enter), 0).pop()
    else {
        panic!("no Send");
    };
    app.handle_net(
        NetEvent::SendFailed {
            client_msg_id,
            reason: "timed out waiting for the server".to_owned(),
        },
        0,
    );
    let pending = &app.conversation(CHAT).unwrap().pending;
    assert_eq!(pending.len(), 1);
    assert!(pending[0].failed.is_some());
    assert!(app.status.as_ref().is_some_and(|s| s.error));

    type_text(&mut app, "/retry", 0);
    let requests = app.handle_key(key(KeyCode::Enter), 0);
    assert_eq!(
        requests,
        [Request::Send {
            conversation_id: CHAT,
            client_msg_id,
            body: "lost?".to_owned(),
            file: None,
        }]
    );
    assert!(app.conversation(CHAT).unwrap().pending[0].failed.is_none());
    type_text(&mut app, "/retry", 0);
    assert!(
        app.handle_key(key(KeyCode::Enter), 0).is_empty(),
        "nothing failed now"
    );
}

// A conversation fetched by a request the server answered before messages this client has
// already applied does not lower the unread count those messages raised.
#[test]
fn stale_conversation_replies_keep_newer_counts() {
    let mut app = logged_in();
    const NEW: ConversationId = 300;
    live(
        &mut app,
        1,
        UpdateKind::Message(message(NEW, 1, BOB, "one")),
    );
    live(
        &mut app,
        2,
        UpdateKind::Message(message(NEW, 2, BOB, "two")),
    );
    assert_eq!(app.conversation(NEW).unwrap().unread, 2);
    app.handle_net(
        NetEvent::Conversation {
            info: ConversationInfo {
                conversation_id: NEW,
                kind: ConversationKind::Direct,
                last_seq: 1,
                unread: 1,
                members: vec![
                    Member {
                        user_id: ME,
                        role: Role::Member,
                    },
                    Member {
                        user_id: BOB,
                        role: Role::Member,
                    },
                ],
                ..ConversationInfo::default()
            },
            open: false,
        },
        0,
    );
    let conversation = app.conversation(NEW).unwrap();
    assert_eq!(conversation.unread, 2);
    assert_eq!(conversation.peer, BOB);
    assert_eq!(app.title(conversation), "bob");
}

// A stored session that cannot be resumed because the server is out of reach ends the client with
// the reason (the form would create another device); one the server refuses shows the form.
#[test]
fn resume_failures() {
    let mut app = App::new([0; 8], HashMap::new());
    let requests = app.resume(Credentials::Resume([1; 32]));
    assert_eq!(requests, [Request::Start(Credentials::Resume([1; 32]))]);
    assert_eq!(app.screen, Screen::Connecting);
    app.handle_net(
        NetEvent::AuthFailed {
            reason: "cannot connect".to_owned(),
            refused: false,
        },
        0,
    );
    assert!(app.quit);
    assert_eq!(app.fatal.as_deref(), Some("cannot connect"));

    let mut app = App::new([0; 8], HashMap::new());
    app.resume(Credentials::Resume([1; 32]));
    app.handle_net(
        NetEvent::AuthFailed {
            reason: "the stored session is no longer valid".to_owned(),
            refused: true,
        },
        0,
    );
    assert!(!app.quit);
    assert_eq!(app.screen, Screen::Login);
    assert!(app.form.error.is_some());
}
