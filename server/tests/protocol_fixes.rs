//! Integration tests of places where `ternd` once disagreed with the spec: pages cut short by the
//! frame size. Each runs against a real `ternd` process on both I/O engines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::BTreeSet;

use common::*;
use tern_client::ClientError;
use tern_protocol::ErrorCode;

on_both_engines!(conversations_cut_by_frame_size_report_has_more,);

fn server_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

// Proves a `Conversations` page cut short by the frame size says `has_more` (§11.5, §16.3), and
// that paging with `after` reaches every conversation: three direct conversations whose last
// messages are 100,000 four-byte characters (400 KB each) do not fit in one 1 MiB frame.
async fn conversations_cut_by_frame_size_report_has_more(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, alice_auth) = server.register("alice").await;
    let big = "😀".repeat(100_000);
    let mut expected = BTreeSet::new();
    for (n, name) in ["bob", "carol", "dave"].into_iter().enumerate() {
        let (peer, _) = server.register(name).await;
        let conversation = peer.open_direct(alice_auth.user_id).await.unwrap();
        peer.send(conversation.conversation_id, cmid(1, n as u64), &big)
            .await
            .unwrap();
        expected.insert(conversation.conversation_id);
    }

    for limit in [0, 3] {
        let first = alice.list_conversations(0, limit).await.unwrap();
        assert!(
            first.conversations.len() < 3,
            "three 400 KB messages cannot share one frame"
        );
        assert!(
            first.has_more,
            "limit {limit}: a page of {} cut by the frame size must say has_more",
            first.conversations.len()
        );

        let mut seen = BTreeSet::new();
        let mut after = 0;
        for _ in 0..10 {
            let page = alice.list_conversations(after, limit).await.unwrap();
            for summary in &page.conversations {
                assert!(summary.conversation_id > after, "ascending ids");
                let last = summary.last_message.as_ref().expect("the last message");
                assert_eq!(last.body.chars().count(), 100_000);
                seen.insert(summary.conversation_id);
            }
            if !page.has_more {
                break;
            }
            after = page
                .conversations
                .last()
                .expect("a page with has_more holds an item")
                .conversation_id;
        }
        assert_eq!(seen, expected, "limit {limit}: paging reaches every one");
    }
}
