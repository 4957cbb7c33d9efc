//! End-to-end encryption from the command line against a real `ternd`: `tern send --encrypted`
//! and an encrypted group, `history` showing the decrypted text while the server holds only
//! ciphertext, `tern verify` showing the same safety number to both users and warning once
//! a peer's devices change, and the key backup carrying encrypted history to a new device.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::{Ternd, User};

fn bodies(history: &Value) -> Vec<String> {
    history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect()
}

/// The recovery key in the text `tern backup enable` prints.
fn recovery_key(text: &str) -> String {
    text.lines()
        .find_map(|line| line.strip_prefix("recovery key: "))
        .unwrap_or_else(|| panic!("no recovery key in {text:?}"))
        .trim()
        .to_owned()
}

// Proves the key backup carries encrypted history to a new device: alice's first device backs up
// its room keys (and the ones it makes and receives afterwards), and her new device, which can
// read none of the earlier messages, reads them all once it restores the backup with the recovery
// key. A wrong or malformed key is refused with a clear error, and so is a backup from a device
// that has no keys or a restore for an account with no backup.
#[test]
fn key_backup_restores_history_on_a_new_device() {
    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");
    let bob = User::registered(&ternd, "bob");
    bob.json(&["verify", "alice"]);
    alice.json(&["send", "--encrypted", "bob", "alice before the backup"]);
    bob.json(&["send", "alice", "bob before the backup"]);
    let direct = ["alice before the backup", "bob before the backup"];
    assert_eq!(bodies(&alice.json(&["history", "bob"])), direct);

    // A device that never set up encryption has nothing to back up; an account with no backup
    // has nothing to restore.
    let carol = User::registered(&ternd, "carol");
    let empty = carol.tern(&["backup", "enable"]);
    assert_eq!(empty.code, 1, "{empty:?}");
    assert!(
        empty.stderr.contains("not set up on this device"),
        "{empty:?}"
    );

    let enabled = alice.tern(&["backup", "enable"]).ok();
    assert!(enabled.contains("shown only now"), "{enabled}");
    let key = recovery_key(&enabled);
    let groups: Vec<&str> = key.split(' ').collect();
    assert_eq!(groups.len(), 16, "{key}");
    assert!(groups
        .iter()
        .all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_hexdigit())));
    let none = carol.tern(&["backup", "restore", &key]);
    assert_eq!(none.code, 1, "{none:?}");
    assert!(none.stderr.contains("no key backup"), "{none:?}");

    // Keys made and received after the backup was enabled go into it too.
    let group = alice.json(&["group", "create", "pair", "--members", "bob", "--encrypted"]);
    let id = group["conversation_id"].as_u64().unwrap().to_string();
    alice.json(&["send", "--group", &id, "alice in the group"]);
    bob.json(&["send", "--group", &id, "bob in the group"]);
    let in_group = ["alice in the group", "bob in the group"];
    assert_eq!(bodies(&alice.json(&["history", "--group", &id])), in_group);

    // A new device of alice's sees the messages but cannot open them.
    let phone = User::new(&ternd, "alice");
    phone.tern(&["login", "alice"]).ok();
    let locked = |phone: &User| {
        let history = phone.json(&["history", "bob"]);
        bodies(&history)
            .iter()
            .all(|body| body.starts_with("[cannot decrypt"))
    };
    assert!(locked(&phone));

    let first = if key.starts_with('0') { "1" } else { "0" };
    let wrong = format!("{first}{}", &key[1..]);
    let refused = phone.tern(&["backup", "restore", &wrong]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("wrong recovery key"), "{refused:?}");
    let refused = phone.tern(&["--json", "backup", "restore", &wrong]);
    let error: Value = serde_json::from_str(&refused.stderr).unwrap();
    assert_eq!(error["exit"], 1, "{error}");
    let malformed = phone.tern(&["backup", "restore", "not-a-recovery-key"]);
    assert_eq!(malformed.code, 2, "{malformed:?}");
    assert!(
        malformed.stderr.contains("64 hexadecimal digits"),
        "{malformed:?}"
    );
    assert!(locked(&phone), "a refused key imports nothing");

    // Nothing on standard input is bad usage, before the server is asked.
    let nothing = phone.tern_with_stdin(&["backup", "restore"], "");
    assert_eq!(nothing.code, 2, "{nothing:?}");
    assert!(locked(&phone), "no key imports nothing");

    // The key on standard input, out of the process list.
    let restored = phone
        .tern_with_stdin(&["--json", "backup", "restore"], &format!("{key}\n"))
        .json();
    assert_eq!(
        restored["restored"], 4,
        "two direct and two group room keys: {restored}"
    );
    assert_eq!(bodies(&phone.json(&["history", "bob"])), direct);
    assert_eq!(bodies(&phone.json(&["history", "--group", &id])), in_group);

    // The key typed as separate groups works too; nothing is new the second time.
    let mut args = vec!["backup", "restore"];
    args.extend(key.split(' '));
    let again = phone.tern(&args).ok();
    assert_eq!(again.trim(), "restored 0 room keys from the key backup");
}

// Proves an encrypted direct conversation and an encrypted group work from scripts: each side
// reads the other's text, every message is marked encrypted, and an attachment arrives
// described inside the encrypted message.
#[test]
fn encrypted_chat_from_scripts() {
    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");
    let bob = User::registered(&ternd, "bob");
    let carol = User::registered(&ternd, "carol");
    // Bob and carol have keys once their client has run an encrypted command.
    bob.json(&["verify", "alice"]);
    carol.json(&["verify", "alice"]);

    let sent = alice.json(&["send", "--encrypted", "bob", "secret hello"]);
    assert_eq!(sent["encrypted"], true, "{sent}");
    let reply = bob.json(&["send", "alice", "secret reply"]);
    assert_eq!(
        reply["encrypted"], true,
        "an encrypted conversation stays so"
    );
    for user in [&alice, &bob] {
        let peer = if std::ptr::eq(user, &alice) {
            "bob"
        } else {
            "alice"
        };
        let history = user.json(&["history", peer]);
        assert_eq!(
            bodies(&history),
            ["secret hello", "secret reply"],
            "{history}"
        );
        assert!(history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["encrypted"] == true));
    }

    let synced = bob.json(&["sync"]).to_string();
    assert!(
        synced.contains("secret hello"),
        "sync shows the text: {synced}"
    );
    assert!(!synced.contains("megolm.v1:"), "{synced}");

    let group = alice.json(&[
        "group",
        "create",
        "trio",
        "--members",
        "bob,carol",
        "--encrypted",
    ]);
    let id = group["conversation_id"].as_u64().unwrap().to_string();
    carol.json(&["send", "--group", &id, "carol in the trio"]);
    let file = carol.dir().join("note.txt");
    std::fs::write(&file, "attached secret").unwrap();
    let file_arg = file.to_str().unwrap();
    carol.json(&["upload", file_arg, "--group", &id, "--message", "a file"]);
    let history = bob.json(&["history", "--group", &id]);
    let texts = bodies(&history);
    assert_eq!(texts[0], "carol in the trio");
    assert!(
        texts[1].starts_with("a file") && texts[1].contains("note.txt"),
        "{texts:?}"
    );
}

// Proves both users see the same safety number and each other's fingerprints, and that a new
// device of one of them is reported as a change the next time the other verifies.
#[test]
fn verify_shows_safety_numbers_and_changes() {
    let ternd = Ternd::start();
    let alice = User::registered(&ternd, "alice");
    let bob = User::registered(&ternd, "bob");
    // Each publishes keys on first use; after that both see both.
    alice.json(&["verify", "bob"]);
    bob.json(&["verify", "alice"]);
    let first = alice.json(&["verify", "bob"]);
    let theirs = bob.json(&["verify", "alice"]);
    assert_eq!(first["safety_number"], theirs["safety_number"]);
    let again = alice.json(&["verify", "bob"]);
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(again["devices"].as_array().unwrap().len(), 2);

    let bob_phone = User::new(&ternd, "bob");
    bob_phone.tern(&["login", "bob"]).ok();
    bob_phone.json(&["verify", "alice"]);
    let after = alice.json(&["verify", "bob"]);
    assert_eq!(after["changed"], true, "{after}");
    assert_ne!(after["safety_number"], first["safety_number"]);
    let text = alice.tern(&["verify", "bob"]).ok();
    assert!(text.contains("safety number:"), "{text}");
}
