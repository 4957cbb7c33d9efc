//! The scripting subcommands end to end: `tern` processes against a real `ternd`, each user with
//! a config file of their own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Ternd, User, PASSWORD};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn bodies(history: &Value) -> Vec<String> {
    history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect()
}

fn conversation<'a>(list: &'a Value, peer_name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["peer_name"] == peer_name)
        .unwrap_or_else(|| panic!("no conversation with {peer_name} in {list}"))
}

// Registering stores a session in a 0600 file in a 0700 directory; a message sent with `send` is in
// both users' history exactly once; unread counts follow it and `read` clears them.
#[test]
fn send_history_and_unread_counts() {
    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");
    let bob = User::registered(&ternd, "bob");
    assert_eq!(mode(&alice.config), 0o600);
    assert_eq!(mode(alice.dir()), 0o700);
    let config = std::fs::read_to_string(&alice.config).unwrap();
    assert!(
        config.contains("[session]") && config.contains("token"),
        "{config}"
    );
    assert!(!config.contains(PASSWORD), "the password is never stored");

    let sent = alice.json(&["send", "bob", "hello bob"]);
    assert_eq!(sent["seq"], 1);
    alice.json(&["send", "bob", "second"]);

    // Text output: one line per message, oldest first.
    let text = bob.tern(&["history", "alice", "--limit", "20"]).ok();
    assert_eq!(text.matches("hello bob").count(), 1, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("hello bob") && lines[1].contains("second"));

    let history = alice.json(&["history", "bob"]);
    assert_eq!(bodies(&history), ["hello bob", "second"]);
    assert_eq!(
        history["messages"][0]["message_id"], sent["message_id"],
        "the message sent is the one in history"
    );
    let limited = alice.json(&["history", "bob", "--limit", "1"]);
    assert_eq!(bodies(&limited), ["second"]);
    assert_eq!(limited["has_more"], true);
    let older = alice.json(&["history", "bob", "--before", "2"]);
    assert_eq!(bodies(&older), ["hello bob"]);

    // Bob has two unread messages; alice none (her own messages are not unread for her).
    let bobs = bob.json(&["conversations"]);
    let with_alice = conversation(&bobs, "alice");
    assert_eq!(with_alice["unread"], 2, "{bobs}");
    assert_eq!(with_alice["last_message"]["body"], "second");
    assert_eq!(
        conversation(&alice.json(&["conversations"]), "bob")["unread"],
        0
    );
    let text = bob.tern(&["conversations"]).ok();
    assert!(text.contains("unread 2"), "{text}");

    bob.tern(&["read", "alice"]).ok();
    assert_eq!(
        conversation(&bob.json(&["conversations"]), "alice")["unread"],
        0
    );
}

// Users the config file never named are shown by name: `conversations`, `history` and `groups` ask
// the server for the names of the ids they print (GetUsers) and remember them.
#[test]
fn unknown_users_are_shown_by_name() {
    let ternd = Ternd::start();
    let carol = User::registered(&ternd, "carol");
    let erin = User::registered(&ternd, "erin");
    let dave = User::registered(&ternd, "dave");
    let carol_id = carol.json(&["whoami"])["user_id"].as_u64().unwrap();
    carol.json(&["send", "dave", "hi dave"]);
    let group = carol.json(&["group", "create", "club", "--members", "dave,erin"]);
    let group = group["conversation_id"].to_string();
    carol.json(&["send", "--group", &group, "hi club"]);

    let text = dave.tern(&["conversations"]).ok();
    assert!(text.contains("carol"), "{text}");
    assert!(!text.contains(&format!("#{carol_id}")), "{text}");
    let list = dave.json(&["conversations"]);
    assert_eq!(
        conversation(&list, "carol")["last_message"]["body"],
        "hi dave"
    );
    let config = std::fs::read_to_string(&dave.config).unwrap();
    assert!(config.contains("carol"), "remembered: {config}");

    let groups = erin.tern(&["groups"]).ok();
    assert!(
        groups.contains("carol (") && groups.contains("dave ("),
        "{groups}"
    );
    let history = erin.tern(&["history", "--group", &group]).ok();
    assert!(history.contains("carol: hi club"), "{history}");
}

// Commands resume the stored session; `logout` revokes it, after which the old token is refused
// with the server's BAD_CREDENTIALS and the config has no session left.
#[test]
fn whoami_resumes_and_logout_revokes() {
    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");
    let me = alice.json(&["whoami"]);
    assert_eq!(me["username"], "alice");
    assert_eq!(me["device_id"], 1);

    let saved = std::fs::read_to_string(&alice.config).unwrap();
    alice.tern(&["logout"]).ok();
    let out = alice.tern(&["whoami"]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("not logged in"), "{out:?}");

    // The revoked token, put back, no longer works.
    std::fs::write(&alice.config, saved).unwrap();
    let out = alice.tern(&["whoami"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("BAD_CREDENTIALS"), "{out:?}");

    // Logging in again creates a second device, and a third from another config file.
    let login = alice.json(&["login", "alice"]);
    assert_eq!(login["device_id"], 2);
    assert_eq!(alice.json(&["whoami"])["device_id"], 2);
    let laptop = User::new(&ternd, "alice");
    laptop.tern(&["login", "alice", "--device", "laptop"]).ok();
    let devices = alice.json(&["devices"]);
    let listed: Vec<(u64, bool)> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device_id"].as_u64().unwrap(),
                d["current"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [(2, true), (3, false)], "{devices}");
    assert_eq!(devices[1]["name"], "laptop");

    // Revoking the laptop from here ends its session.
    alice.tern(&["revoke", "3"]).ok();
    let out = laptop.tern(&["whoami"]);
    assert!(out.stderr.contains("BAD_CREDENTIALS"), "{out:?}");
    let out = alice.tern(&["revoke", "2"]);
    assert_eq!(
        out.code, 2,
        "this device is logged out with `logout`: {out:?}"
    );
}

// Failures exit non-zero with the server's error code name and message on stderr, and nothing on
// stdout.
#[test]
fn errors_are_reported_with_codes() {
    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");

    let out = alice.tern(&["send", "nobody", "hi"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("NOT_FOUND"), "{out:?}");
    assert!(out.stderr.contains("nobody"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");

    let out = alice.tern(&["--json", "history", "nobody"]);
    assert_eq!(out.code, 1, "{out:?}");
    let error: Value = serde_json::from_str(out.stderr.trim()).unwrap();
    assert_eq!(error["code"], "NOT_FOUND");

    let out = User::new(&ternd, "alice").tern(&["register", "alice"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("USERNAME_TAKEN"), "{out:?}");

    let stranger = User::new(&ternd, "alice");
    let out = stranger.tern_with_stdin(&["login", "alice", "--password-stdin"], "wrong password\n");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("BAD_CREDENTIALS"), "{out:?}");

    let out = stranger.tern(&["conversations"]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("not logged in"), "{out:?}");

    let out = alice.tern(&["send", "--group", "12345", "hi"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("NOT_FOUND"), "{out:?}");

    // Nothing listens on port 1 of the loopback.
    let out = alice.tern(&["--server", "127.0.0.1:1", "whoami"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("cannot connect to 127.0.0.1:1"),
        "{out:?}"
    );

    // Without a terminal there is no interactive client, and `tern` says so.
    let out = alice.tern(&[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("needs a terminal"), "{out:?}");

    let out = alice.tern(&["download", "999", "--out", "/nonexistent/x"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("NOT_FOUND"), "{out:?}");
}

// `--password-stdin` reads the password from the first line of standard input; a config file that
// others can read is refused until its mode is fixed.
#[test]
fn password_stdin_and_config_permissions() {
    let ternd = Ternd::start();
    let alice = User::new(&ternd, "alice");
    let out = alice.tern_with_stdin(&["register", "alice", "--password-stdin"], "s3cret pass\n");
    assert_eq!(out.code, 0, "{out:?}");
    let out = User::new(&ternd, "alice")
        .tern_with_stdin(&["login", "alice", "--password-stdin"], "s3cret pass\n");
    assert_eq!(
        out.code, 0,
        "the password read from stdin is the one registered: {out:?}"
    );

    std::fs::set_permissions(&alice.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = alice.tern(&["whoami"]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("readable by others"), "{out:?}");
    std::fs::set_permissions(&alice.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    alice.tern(&["whoami"]).ok();
}

// Groups: create with members, add, list with members and roles, send to the group, remove a member
// (who then cannot read it), rename.
#[test]
fn groups_create_add_list_remove() {
    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");
    let bob = User::registered(&ternd, "bob");
    let carol = User::registered(&ternd, "carol");

    let group = alice.json(&["group", "create", "friends", "--members", "bob"]);
    let id = group["conversation_id"].as_u64().unwrap().to_string();
    assert_eq!(group["members"].as_array().unwrap().len(), 2, "{group}");

    alice.tern(&["group", "add", &id, "carol"]).ok();
    let groups = alice.json(&["groups"]);
    let listed = &groups.as_array().unwrap()[0];
    assert_eq!(listed["name"], "friends");
    let mut members: Vec<(String, String)> = listed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["username"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    members.sort();
    assert_eq!(
        members,
        [
            ("alice".to_owned(), "owner".to_owned()),
            ("bob".to_owned(), "member".to_owned()),
            ("carol".to_owned(), "member".to_owned()),
        ]
    );
    let text = alice.tern(&["groups"]).ok();
    assert!(
        text.contains("friends") && text.contains("carol (member)"),
        "{text}"
    );

    // Carol made admin may add and remove members; bob, a member, may not.
    alice.tern(&["group", "role", &id, "carol", "admin"]).ok();
    let show = alice.json(&["group", "show", &id]);
    let carol_role = show["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["username"] == "carol")
        .map(|m| m["role"].clone());
    assert_eq!(carol_role, Some(Value::from("admin")), "{show}");

    carol.json(&["send", "--group", &id, "hi all"]);
    assert_eq!(bodies(&bob.json(&["history", "--group", &id])), ["hi all"]);
    let bobs = bob.json(&["conversations"]);
    assert_eq!(bobs[0]["unread"], 1, "{bobs}");

    // A member may not remove others.
    let out = bob.tern(&["group", "remove", &id, "carol"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("FORBIDDEN"), "{out:?}");

    alice.tern(&["group", "remove", &id, "bob"]).ok();
    let out = bob.tern(&["history", "--group", &id]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("NOT_FOUND"), "{out:?}");
    assert_eq!(bob.json(&["groups"]), Value::Array(vec![]));

    carol.tern(&["group", "rename", &id, "best friends"]).ok();
    assert_eq!(alice.json(&["group", "show", &id])["name"], "best friends");
    carol.tern(&["group", "leave", &id]).ok();
    let show = alice.json(&["group", "show", &id]);
    assert_eq!(show["members"].as_array().unwrap().len(), 1, "{show}");
}

// A file larger than one chunk, uploaded with `upload --to`, arrives as an attachment that the
// recipient downloads byte for byte; a user outside the conversation cannot read it.
#[test]
fn upload_and_download_round_trip() {
    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");
    let bob = User::registered(&ternd, "bob");
    let carol = User::registered(&ternd, "carol");

    // 600 KiB of varied bytes: three chunks at the default 256 KiB.
    let data: Vec<u8> = (0..600 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = alice.dir().join("photo.bin");
    std::fs::write(&file, &data).unwrap();

    let sent = alice.json(&["upload", file.to_str().unwrap(), "--to", "bob"]);
    let media_id = sent["media"]["media_id"].as_u64().unwrap();
    assert_eq!(sent["media"]["size"], data.len());

    let history = bob.json(&["history", "alice"]);
    let message = &history["messages"][0];
    assert_eq!(message["body"], "photo.bin");
    assert_eq!(message["attachments"][0]["media_id"], media_id);
    assert_eq!(
        message["attachments"][0]["mime"],
        "application/octet-stream"
    );

    let out = bob.dir().join("saved.bin");
    let saved = bob.json(&[
        "download",
        &media_id.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(saved["size"], data.len());
    assert_eq!(std::fs::read(&out).unwrap(), data);

    let stolen = carol.dir().join("stolen.bin");
    let denied = carol.tern(&[
        "download",
        &media_id.to_string(),
        "--out",
        stolen.to_str().unwrap(),
    ]);
    assert_eq!(denied.code, 1, "{denied:?}");
    assert!(denied.stderr.contains("NOT_FOUND"), "{denied:?}");
    assert!(!stolen.exists());

    // A download into a directory that does not exist fails locally and leaves nothing behind.
    let nowhere = bob.dir().join("missing").join("x.bin");
    let out_err = bob.tern(&[
        "download",
        &media_id.to_string(),
        "--out",
        nowhere.to_str().unwrap(),
    ]);
    assert_eq!(out_err.code, 5, "{out_err:?}");

    // An empty file is refused before anything is sent.
    let empty = alice.dir().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let out = alice.tern(&["upload", empty.to_str().unwrap(), "--to", "bob"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("empty"), "{out:?}");

    // A missing file fails before anything is sent.
    let out = alice.tern(&["upload", "/nonexistent/file", "--to", "bob"]);
    assert_eq!(out.code, 5, "{out:?}");
    assert_eq!(
        bob.json(&["history", "alice"])["messages"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

// `sync` prints each update once, remembers its cursor, and its acknowledgement makes the sender
// see a delivered receipt.
#[test]
fn sync_prints_updates_once_and_acknowledges() {
    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");
    let bob = User::registered(&ternd, "bob");
    alice.json(&["send", "bob", "are you there?"]);

    let first = bob.json(&["sync"]);
    let messages: Vec<&Value> = first["updates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["kind"] == "message")
        .collect();
    assert_eq!(messages.len(), 1, "{first}");
    assert_eq!(messages[0]["message"]["body"], "are you there?");
    let again = bob.json(&["sync"]);
    assert_eq!(
        again["updates"],
        Value::Array(vec![]),
        "nothing new the second time"
    );
    assert_eq!(again["cursor"], first["cursor"]);

    // The acknowledgement is a notification the server handles on its own time: poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let page = alice.json(&["sync"]);
        seen.extend(page["updates"].as_array().unwrap().iter().cloned());
        let delivered = seen
            .iter()
            .any(|u| u["kind"] == "receipt" && u["receipt"] == "delivered" && u["up_to_seq"] == 1);
        if delivered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no delivered receipt for alice: {seen:?}"
        );
    }
}

// `sync` shows every user by name, as `history` and `conversations` do, also users the config file
// did not know yet: the sender of a message, a group's creator, a receipt's reader.
#[test]
fn sync_shows_names() {
    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");
    let bob = User::registered(&ternd, "bob");
    let carol = User::registered(&ternd, "carol");
    let alice_id = alice.json(&["whoami"])["user_id"].as_u64().unwrap();
    let bob_id = bob.json(&["whoami"])["user_id"].as_u64().unwrap();
    let carol_id = carol.json(&["whoami"])["user_id"].as_u64().unwrap();
    alice.json(&["send", "bob", "are you there?"]);
    let group = alice.json(&["group", "create", "club", "--members", "bob,carol"]);
    let group = group["conversation_id"].to_string();
    alice.json(&["send", "--group", &group, "hi club"]);

    let text = carol.tern(&["sync"]).ok();
    assert!(text.contains("created by alice"), "{text}");
    assert!(text.contains("alice: hi club"), "{text}");
    let text = bob.tern(&["sync"]).ok();
    assert!(text.contains("alice: are you there?"), "{text}");
    assert!(text.contains("alice: hi club"), "{text}");
    for text in [&text, &carol.tern(&["history", "--group", &group]).ok()] {
        assert!(!text.contains(&format!("#{alice_id}")), "{text}");
    }

    // Bob's sync acknowledged both messages; carol reads the group. Alice's config knows bob but
    // not carol, and her sync names both (a poll, bounded: receipts come on the server's time).
    carol.json(&["read", "--group", &group]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    loop {
        seen.push_str(&alice.tern(&["sync"]).ok());
        seen.push('\n');
        if seen.contains("carol read") && seen.contains("bob received") {
            break;
        }
        assert!(Instant::now() < deadline, "no receipts for alice: {seen}");
    }
    for id in [bob_id, carol_id] {
        assert!(!seen.contains(&format!("#{id}")), "{seen}");
    }
}

// `tls://host:port` connects over TLS, checking the certificate against the host name and the
// PEM file in TERN_TLS_CA; without that file the development certificate is refused (exit 3).
#[test]
fn tls_server_address() {
    let ternd = Ternd::start_with(&["--tls-listen", "127.0.0.1:0", "--tls-self-signed"]);
    let port = ternd.tls_addr.expect("a TLS address").port();
    let ca = ternd.data_dir().join("tls/self-signed.pem");
    let dir = tempfile::tempdir().unwrap();
    let tern = |args: &[&str], ca: Option<&std::path::Path>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tern"));
        command
            .arg("--server")
            .arg(format!("tls://localhost:{port}"))
            .args(args)
            .env("TERN_CONFIG", dir.path().join("config.toml"))
            .env("TERN_PASSWORD", PASSWORD)
            .env_remove("TERN_TLS_CA");
        if let Some(ca) = ca {
            command.env("TERN_TLS_CA", ca);
        }
        support::run(command, None)
    };
    let refused = tern(&["register", "dave"], None);
    assert_eq!(refused.code, 3, "{refused:?}");
    let registered = tern(&["register", "dave"], Some(&ca)).ok();
    assert!(registered.contains("registered dave"), "{registered}");
    let whoami = tern(&["whoami"], Some(&ca)).ok();
    assert!(whoami.contains("dave"), "{whoami}");
}

// `history --after SEQ` pages forwards: the oldest messages above SEQ, with `has_more` while newer
// ones remain; `--after 0` starts at the first message; `--after` with `--before` is a usage error.
#[test]
fn history_after_pages_forwards() {
    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");
    User::registered(&ternd, "bob");
    for n in 1..=5 {
        alice.json(&["send", "bob", &format!("m{n}")]);
    }
    let page = alice.json(&["history", "bob", "--after", "2", "--limit", "2"]);
    assert_eq!(bodies(&page), ["m3", "m4"]);
    assert_eq!(page["has_more"], true);
    let last = alice.json(&["history", "bob", "--after", "4", "--limit", "2"]);
    assert_eq!(bodies(&last), ["m5"]);
    assert_eq!(last["has_more"], false);
    let first = alice.json(&["history", "bob", "--after", "0", "--limit", "1"]);
    assert_eq!(bodies(&first), ["m1"]);
    let text = alice.tern(&["history", "bob", "--after", "3"]).ok();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("m4") && lines[1].contains("m5"), "{text}");
    let both = alice.tern(&["history", "bob", "--after", "1", "--before", "4"]);
    assert_eq!(both.code, 2, "{both:?}");
}
