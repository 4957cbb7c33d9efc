//! End-to-end encryption from the command line against a real `ternd`: `tern send --encrypted`
//! and an encrypted group, `history` showing the decrypted text while the server holds only
//! ciphertext, and `tern verify` showing the same safety number to both users and warning once
//! a peer's devices change.

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
