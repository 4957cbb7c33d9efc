//! The interactive client driven through a pseudo-terminal against a real `ternd`, its screen read
//! back with a terminal emulator; the other side is the client library or the scripting commands.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::pty::Tui;
use support::{Ternd, User, PASSWORD};
use tern_client::protocol::frames;
use tern_client::protocol::types::ReceiptKind;
use tern_client::protocol::{Body, UpdateKind};
use tern_client::{Client, ConnectOptions, Event};

/// How long the client library side waits for one event.
const EVENT_WAIT: Duration = Duration::from_secs(15);

// A chat from start to end: alice resumes her stored session, opens a chat with bob and sends a
// message, which bob receives once; bob's delivery and reading show as ticks, his presence and
// typing show in the title and under the messages, and his answer appears on alice's screen, which
// she, having the chat open, marks read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_with_ticks_presence_and_typing() {
    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");
    let bob = User::registered(&ternd, "bob");

    let mut tui = Tui::start(&alice);
    tui.wait_for("alice @");
    tui.wait_for("conversations");

    // Ctrl-N starts the /open command.
    tui.send("\x0e");
    tui.wait_for("/open");
    tui.type_line("bob");
    tui.wait_for("bob · last seen");

    tui.type_line("hi bob");
    tui.wait_for("alice: hi bob ✓");

    let history = bob.json(&["history", "alice"]);
    let bodies: Vec<&Value> = history["messages"].as_array().unwrap().iter().collect();
    assert_eq!(bodies.len(), 1, "{history}");
    assert_eq!(bodies[0]["body"], "hi bob");

    // Bob comes online with the client library: alice sees him online.
    let sdk = Client::connect(ternd.addr, ConnectOptions::default())
        .await
        .unwrap();
    sdk.login("bob", PASSWORD, "sdk").await.unwrap();
    tui.wait_for("bob · online");
    let alice_id = sdk.lookup_user("alice").await.unwrap().user_id;
    let chat = sdk.open_direct(alice_id).await.unwrap().conversation_id;

    // Bob's device catches up and acknowledges: delivered.
    let mut since = 0;
    loop {
        let page = sdk.sync(since, 0).await.unwrap();
        since = page.updates.last().map_or(since, |u| u.user_seq);
        if !page.has_more {
            break;
        }
    }
    sdk.ack(since).await.unwrap();
    tui.wait_for("hi bob ✓✓");

    // Bob reads alice's message: read.
    sdk.mark_read(chat, 1).await.unwrap();
    tui.wait_for("hi bob ✓✓ read");

    sdk.typing(chat, true).await.unwrap();
    tui.wait_for("bob is typing");

    sdk.send(chat, [9; 16], "hello alice").await.unwrap();
    let screen = tui.wait_for("bob: hello alice");
    assert_eq!(screen.matches("hi bob").count(), 1, "shown once:\n{screen}");
    assert!(!screen.contains("RATE_LIMITED"), "{screen}");
    // A message ends its sender's typing indicator.
    tui.wait_until("no typing indicator", |s| !s.contains("is typing"));

    // Alice has the chat open, so bob's message is marked read: bob gets her read receipt.
    sdk.wait_for_event(
        |event| {
            matches!(event, Event::Update(update) if matches!(&update.kind,
                UpdateKind::Receipt(r) if r.kind == ReceiptKind::Read
                    && r.user_id == alice_id && r.up_to_seq >= 2))
        },
        EVENT_WAIT,
    )
    .await
    .unwrap();

    // Bob reads alice's message: read.

    // Ctrl-C quits cleanly.
    tui.send("\x03");
    assert!(tui.wait_exit(), "tern chat exits with success");
    sdk.close().await;
}

// A new user registers through the form (the session is stored in a 0600 file), sees unread counts
// in the list, creates a group and adds a member, sends a file into it, and saves an attachment
// received from someone else.
#[test]
fn register_groups_unread_and_files() {
    use std::os::unix::fs::PermissionsExt;

    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");
    let bob = User::registered(&ternd, "bob");
    let carol = User::new(&ternd, "carol");

    let mut tui = Tui::start(&carol);
    tui.wait_for("log in");
    // F2 switches the form to registering.
    tui.send("\x1bOQ");
    tui.wait_for("create an account");
    tui.send("carol\t");
    tui.type_line(PASSWORD);
    tui.wait_for("carol @");
    let mode = std::fs::metadata(&carol.config)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // Messages from alice arrive while carol is elsewhere: the list counts them, and names alice,
    // whom carol's client never heard of before (it asks the server, GetUsers).
    alice.tern(&["send", "carol", "one"]).ok();
    alice.tern(&["send", "carol", "two"]).ok();
    tui.wait_until("alice's conversation with 2 unread", |s| {
        s.contains("alice (2)")
    });

    // A group with alice, then bob added.
    tui.send("\x07");
    tui.type_line("team alice");
    tui.wait_for("team · 2 members");
    tui.type_line("/add bob");
    tui.wait_for("team · 3 members");
    let groups = alice.json(&["groups"]);
    assert_eq!(groups[0]["name"], "team");
    assert_eq!(
        groups[0]["members"].as_array().unwrap().len(),
        3,
        "{groups}"
    );

    // A file into the group: it arrives as an attachment bob can download.
    let file = carol.dir().join("notes.txt");
    std::fs::write(&file, b"tern file round trip\n").unwrap();
    tui.type_line(&format!("/file {}", file.display()));
    tui.wait_for("carol: notes.txt [file");
    let id = groups[0]["conversation_id"].as_u64().unwrap().to_string();
    let history = bob.json(&["history", "--group", &id]);
    let media_id = history["messages"][0]["attachments"][0]["media_id"]
        .as_u64()
        .unwrap();
    assert_eq!(
        history["messages"][0]["attachments"][0]["mime"],
        "text/plain"
    );
    let copy = bob.dir().join("copy.txt");
    bob.tern(&[
        "download",
        &media_id.to_string(),
        "--out",
        copy.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(std::fs::read(&copy).unwrap(), b"tern file round trip\n");

    // Bob sends a file into the group; carol saves it with /save.
    let photo = bob.dir().join("photo.bin");
    std::fs::write(&photo, [1u8, 2, 3, 4, 5]).unwrap();
    let sent = bob.json(&["upload", photo.to_str().unwrap(), "--group", &id]);
    let bob_media = sent["media"]["media_id"].as_u64().unwrap();
    tui.wait_for(&format!("[file {bob_media}"));
    let saved = carol.dir().join("saved.bin");
    tui.type_line(&format!("/save {bob_media} {}", saved.display()));
    tui.wait_for("saved 5 bytes");
    assert_eq!(std::fs::read(&saved).unwrap(), [1, 2, 3, 4, 5]);

    tui.send("\x03");
    assert!(tui.wait_exit());
}

// The interactive client sends heartbeats: with a server that closes connections silent for 1.5 s,
// it stays connected through several times that without a key pressed, and still receives.
#[test]
fn heartbeats_keep_an_idle_client_connected() {
    const IDLE_TIMEOUT_MS: u64 = 1_500;
    let ternd = Ternd::start_with(&[
        "--idle-timeout-ms",
        &IDLE_TIMEOUT_MS.to_string(),
        "--heartbeat-interval-ms",
        "300",
    ]);
    let alice = User::registered(&ternd, "alice");
    let bob = User::registered(&ternd, "bob");
    bob.tern(&["send", "alice", "first"]).ok();
    // Alice learns bob's name (the protocol resolves names to ids, not back).
    alice.tern(&["history", "bob"]).ok();

    let mut tui = Tui::start(&alice);
    tui.wait_for("bob (1)");
    tui.send("\r");
    tui.wait_for("bob: first");

    // The silence is the scenario: nothing to wait for but time itself.
    std::thread::sleep(Duration::from_millis(3 * IDLE_TIMEOUT_MS));
    bob.tern(&["send", "alice", "still there?"]).ok();
    let screen = tui.wait_for("bob: still there?");
    assert!(!screen.contains("disconnected"), "{screen}");
    tui.send("\x03");
    assert!(tui.wait_exit());
}

// Scrolling back: alice joins a group after 250 messages, so her log has none of them and the
// chat shows the newest page from History; PageUp reaches the oldest one by loading the page
// before, and PageDown returns to the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_up_loads_older_history() {
    const MESSAGES: u32 = 250;
    let ternd = Ternd::start_with(&[
        "--send-rate-per-connection",
        "0",
        "--send-rate-per-user",
        "0",
    ]);
    let alice = User::registered(&ternd, "alice");
    let _bob = User::registered(&ternd, "bob");

    let sdk = Client::connect(ternd.addr, ConnectOptions::default())
        .await
        .unwrap();
    sdk.login("bob", PASSWORD, "sdk").await.unwrap();
    let reply = sdk
        .request(frames::CreateGroup {
            name: "archive".to_owned(),
            members: vec![],
            encrypted: false,
        })
        .await
        .unwrap();
    let Body::Conversation(group) = reply else {
        panic!("not a Conversation: {reply:?}");
    };
    let group = group.conversation.conversation_id;
    for i in 1..=MESSAGES {
        let mut id = [0; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        sdk.send(group, id, &format!("m{i:03}")).await.unwrap();
    }
    let alice_id = sdk.lookup_user("alice").await.unwrap().user_id;
    sdk.request(frames::AddMembers {
        conversation_id: group,
        members: vec![alice_id],
    })
    .await
    .unwrap();

    let mut tui = Tui::start(&alice);
    tui.wait_for("archive");
    tui.send("\r");
    tui.wait_for(&format!("m{MESSAGES:03}"));
    assert!(!tui.screen().contains("m001"));

    // Each PageUp moves ten messages; the first page from History holds at most 200.
    let page_up = "\x1b[5~";
    let mut presses = 0;
    while !tui.screen().contains("m001") {
        presses += 1;
        assert!(presses <= 60, "m001 never showed:\n{}", tui.screen());
        let before = tui.screen();
        tui.send(page_up);
        // The press shows as a scroll, or (at the top of what is held) as the older page arriving.
        tui.wait_until("the chat to move", |s| s != before);
    }
    assert!(!tui.screen().contains(&format!("m{MESSAGES:03}")));
    for _ in 0..presses {
        tui.send("\x1b[6~");
    }
    tui.wait_for(&format!("m{MESSAGES:03}"));
    tui.send("\x03");
    assert!(tui.wait_exit());
    sdk.close().await;
}

// A stored session whose server cannot be reached ends the client with the reason and a failure
// exit, instead of offering a form that would create another device.
#[test]
fn unreachable_server_ends_with_the_reason() {
    let ternd = Ternd::start();
    let mut alice = User::registered(&ternd, "alice");
    // Nothing listens on port 1 of the loopback.
    alice.server = "127.0.0.1:1".parse().unwrap();
    let mut tui = Tui::start(&alice);
    tui.wait_for("cannot connect to 127.0.0.1:1");
    assert!(!tui.wait_exit(), "a failure exit");
}

// The list marks end-to-end encrypted conversations with a lock, from the start, and an encrypted
// message shows its text once opened; a plain conversation beside it has no lock.
#[test]
fn encrypted_conversations_are_marked() {
    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");
    let bob = User::registered(&ternd, "bob");
    let carol = User::registered(&ternd, "carol");
    // Bob's device publishes its keys when his client first runs an encrypted command.
    bob.tern(&["verify", "alice"]).ok();
    alice
        .tern(&["send", "--encrypted", "bob", "the secret"])
        .ok();
    carol.tern(&["send", "bob", "in the clear"]).ok();

    let mut tui = Tui::start(&bob);
    // Names come from the server a moment after the list: wait for both.
    let screen = tui.wait_until(
        "alice's conversation marked with a lock, and carol's",
        |s| s.lines().any(|l| l.contains("🔒 alice")) && s.lines().any(|l| l.contains("carol")),
    );
    let carol_line = screen.lines().find(|l| l.contains("carol"));
    assert!(
        carol_line.is_some_and(|l| !l.contains('🔒')),
        "the plain conversation has no lock:\n{screen}"
    );
    tui.send("\x0e");
    tui.wait_for("/open");
    tui.type_line("alice");
    tui.wait_for("the secret");
    tui.send("\x03");
    assert!(tui.wait_exit(), "tern chat exits with success");
}
