//! The crash test: `kill -9` a real `ternd` in the middle of one-to-one traffic, restart it on the
//! same data directory, and check that every acknowledged message is in its conversation's history
//! and in every member's update log exactly once, in seq order. Repeated with different kill points,
//! alternating I/O engines. The seed of each run is printed, so a failure can be replayed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use tern_protocol::UpdateKind;

/// Kill-and-restart rounds.
const ROUNDS: usize = 6;
/// Users; each sends to the next one round the ring, so every user is in two conversations.
const USERS: usize = 4;
/// Most messages one sender sends in a round (the kill usually comes first).
const SENDS_PER_ROUND_MAX: u64 = 2_000;

/// A small deterministic generator (SplitMix64), so a seed replays the same kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// An acknowledged message: its conversation and idempotency key.
type Acked = (u64, [u8; 16]);

// Proves no acknowledged message is lost or duplicated across kill -9 and restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_traffic_loses_and_duplicates_nothing() {
    let seed = std::env::var("TERN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("crash test seed: {seed} (set TERN_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();

    // Accounts and conversations, on a first server.
    let mut tokens = Vec::new();
    let mut user_ids = Vec::new();
    let mut conversations = Vec::new();
    {
        let server = Ternd::start_in("epoll", dir.path(), &[]);
        for i in 0..USERS {
            let (client, auth) = server.register(&format!("user{i}")).await;
            tokens.push(auth.token.unwrap());
            user_ids.push(auth.user_id);
            client.close().await;
        }
        let client = server.client().await;
        client.resume(tokens[0]).await.unwrap();
        for i in 0..USERS {
            let (a, b) = (i, (i + 1) % USERS);
            let c = server.client().await;
            c.resume(tokens[a]).await.unwrap();
            let conv = c.open_direct(user_ids[b]).await.unwrap();
            conversations.push((conv.conversation_id, a, b));
        }
    }

    let acked: Arc<Mutex<Vec<Acked>>> = Arc::new(Mutex::new(Vec::new()));
    for round in 0..ROUNDS {
        let engine = ENGINES[round % ENGINES.len()];
        let mut server = Ternd::start_in(engine, dir.path(), &[]);
        let kill_after = Duration::from_millis(50 + rng.next() % 400);
        let mut senders = Vec::new();
        for (i, &(conversation_id, from, _)) in conversations.iter().enumerate() {
            let client = server.client().await;
            client.resume(tokens[from]).await.unwrap();
            let acked = Arc::clone(&acked);
            senders.push(tokio::spawn(async move {
                let mut n = 0;
                while n < SENDS_PER_ROUND_MAX {
                    let key = cmid(i as u8, (round as u64) << 32 | n);
                    match client
                        .send(conversation_id, key, &format!("r{round} c{i} n{n}"))
                        .await
                    {
                        Ok(_) => acked.lock().unwrap().push((conversation_id, key)),
                        // As a client should: wait as told, then retry the same key.
                        Err(tern_client::ClientError::Server { retry_after_ms, .. })
                            if retry_after_ms > 0 =>
                        {
                            tokio::time::sleep(Duration::from_millis(u64::from(retry_after_ms)))
                                .await;
                            continue;
                        }
                        Err(_) => return,
                    }
                    n += 1;
                }
            }));
        }
        tokio::time::sleep(kill_after).await;
        server.kill9();
        for sender in senders {
            sender.await.unwrap();
        }
        println!(
            "round {round} ({engine}): killed after {kill_after:?}, {} acked so far",
            acked.lock().unwrap().len()
        );
    }

    // Restart once more and check everything.
    let server = Ternd::start_in("uring", dir.path(), &[]);
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "the rounds acknowledged nothing");
    let mut histories: HashMap<u64, Vec<[u8; 16]>> = HashMap::new();
    let client = server.client().await;
    client.resume(tokens[0]).await.unwrap();
    for &(conversation_id, from, _) in &conversations {
        let c = server.client().await;
        c.resume(tokens[from]).await.unwrap();
        let mut messages = Vec::new();
        let mut before = 0;
        loop {
            let page = c.history(conversation_id, before, 0).await.unwrap();
            let Some(first) = page.messages.first() else {
                break;
            };
            before = first.seq;
            let mut older = page.messages.clone();
            older.extend(messages);
            messages = older;
            if !page.has_more {
                break;
            }
        }
        let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=messages.len() as u64).collect::<Vec<_>>(),
            "seqs are gapless"
        );
        histories.insert(
            conversation_id,
            messages.iter().map(|m| m.client_msg_id).collect(),
        );
    }
    for (conversation_id, history) in &histories {
        let unique: HashSet<_> = history.iter().collect();
        assert_eq!(
            unique.len(),
            history.len(),
            "conversation {conversation_id} stores a message twice"
        );
    }
    for (conversation_id, key) in &acked {
        assert!(
            histories[conversation_id].contains(key),
            "an acknowledged message is missing from history"
        );
    }

    // Every member's log holds each message of their conversations exactly once, in seq order.
    // Interrupted fan-outs resume when the server starts, so poll until the logs agree (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for (user, token) in tokens.iter().enumerate() {
        let c = server.client().await;
        c.resume(*token).await.unwrap();
        loop {
            let mismatch = log_mismatch(&c, user, &conversations, &histories).await;
            match mismatch {
                None => break,
                Some(m) if std::time::Instant::now() > deadline => panic!("{m}"),
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// Compares a user's update log with the histories; `Some(description)` when they differ.
async fn log_mismatch(
    c: &tern_client::Client,
    user: usize,
    conversations: &[(u64, usize, usize)],
    histories: &HashMap<u64, Vec<[u8; 16]>>,
) -> Option<String> {
    let updates = sync_all(c, 0).await;
    let mut seen: HashMap<u64, Vec<u64>> = HashMap::new();
    for update in &updates {
        if let UpdateKind::Message(m) = &update.kind {
            seen.entry(m.conversation_id).or_default().push(m.seq);
        }
    }
    for &(conversation_id, a, b) in conversations {
        if user != a && user != b {
            continue;
        }
        let expected: Vec<u64> = (1..=histories[&conversation_id].len() as u64).collect();
        let got = seen.get(&conversation_id).cloned().unwrap_or_default();
        if got != expected {
            return Some(format!(
                "user {user}'s log for conversation {conversation_id}: {} entries, expected {}; first differences: {:?}",
                got.len(),
                expected.len(),
                got.iter().zip(&expected).filter(|(g, e)| g != e).take(5).collect::<Vec<_>>()
            ));
        }
    }
    None
}
