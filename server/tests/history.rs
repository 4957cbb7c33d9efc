//! Integration tests of forward paging of history (`History.after`, protocol revision 1.1) on a
//! real `ternd` over real sockets, on both I/O engines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::*;
use tern_protocol::frames::{History, HistoryPage};
use tern_protocol::{Body, ErrorCode};

on_both_engines!(
    history_pages_forwards,
    history_forwards_cut_by_the_frame_size_says_has_more,
    history_forwards_edges,
);

/// A message body of 100,000 four-byte characters: 400,000 bytes, the largest a message may be.
fn largest_body() -> String {
    "😀".repeat(100_000)
}

fn history_page(reply: Body) -> HistoryPage {
    match reply {
        Body::HistoryPage(page) => page,
        other => panic!("expected HistoryPage, got {other:?}"),
    }
}

fn seqs(page: &HistoryPage) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

/// Alice's direct conversation with bob, holding `count` messages `m1`, `m2`, … from alice.
async fn conversation_with(server: &Ternd, count: u64) -> (tern_client::Client, u64) {
    let (alice, _) = server.register("alice").await;
    let (_bob, bob) = server.register("bob").await;
    let conv = alice
        .open_direct(bob.user_id)
        .await
        .unwrap()
        .conversation_id;
    for n in 1..=count {
        alice
            .send(conv, cmid(1, n), &format!("m{n}"))
            .await
            .unwrap();
    }
    (alice, conv)
}

// Proves `History` with `after` pages forwards: the oldest messages above `after` in ascending
// order, `has_more` while newer ones remain, `after` echoed in the page, `before` bounding the
// range; and that a `History` without `after` is answered as in revision 1.0, without the echo.
async fn history_pages_forwards(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, conv) = conversation_with(&server, 10).await;

    let first = alice.history_after(conv, 0, 4).await.unwrap();
    assert_eq!(seqs(&first), [1, 2, 3, 4]);
    assert!(first.has_more);
    assert_eq!(first.after, Some(0));
    assert_eq!(first.messages[0].body, "m1");
    let mut read = seqs(&first);
    for _ in 0..10 {
        let after = *read.last().unwrap();
        let page = alice.history_after(conv, after, 4).await.unwrap();
        assert_eq!(page.after, Some(after));
        read.extend(seqs(&page));
        if !page.has_more {
            break;
        }
    }
    assert_eq!(
        read,
        (1..=10).collect::<Vec<_>>(),
        "every message once, in order"
    );
    let end = alice.history_after(conv, 10, 0).await.unwrap();
    assert!(end.messages.is_empty() && !end.has_more);

    // `before` bounds a forward page from above: the gap between two pages a client holds.
    let range = alice
        .request(History {
            conversation_id: conv,
            before: 7,
            limit: 0,
            after: Some(3),
        })
        .await
        .unwrap();
    let range = history_page(range);
    assert_eq!(seqs(&range), [4, 5, 6]);
    assert!(!range.has_more, "nothing more below before");
    assert_eq!(range.after, Some(3));
    let cut = history_page(
        alice
            .request(History {
                conversation_id: conv,
                before: 7,
                limit: 2,
                after: Some(3),
            })
            .await
            .unwrap(),
    );
    assert_eq!(seqs(&cut), [4, 5]);
    assert!(cut.has_more, "seq 6 is still below before");

    let old = alice.history(conv, 0, 3).await.unwrap();
    assert_eq!(seqs(&old), [8, 9, 10]);
    assert!(old.has_more);
    assert_eq!(old.after, None, "a 1.0 request gets a 1.0 page");
}

// Proves a forward page cut short by the frame size keeps the oldest messages and says `has_more`,
// so paging on with the last seq reads the rest.
async fn history_forwards_cut_by_the_frame_size_says_has_more(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (_bob, bob) = server.register("bob").await;
    let conv = alice
        .open_direct(bob.user_id)
        .await
        .unwrap()
        .conversation_id;
    let body = largest_body();
    for n in 1..=3 {
        alice.send(conv, cmid(1, n), &body).await.unwrap();
    }
    let first = alice.history_after(conv, 0, 0).await.unwrap();
    assert_eq!(seqs(&first), [1, 2]);
    assert!(first.has_more);
    let rest = alice.history_after(conv, 2, 0).await.unwrap();
    assert_eq!(seqs(&rest), [3]);
    assert!(!rest.has_more);
}

// Proves the edges of forward paging: `after` at or above the newest message and `u64::MAX` give
// an empty page without `has_more`, `before` at or below `after + 1` an empty one, a message sent
// after a final page is found by paging on from it, and a conversation the caller is not in is
// NOT_FOUND with `after` as without it.
async fn history_forwards_edges(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, conv) = conversation_with(&server, 3).await;
    for after in [3, 4, u64::MAX] {
        let page = alice.history_after(conv, after, 0).await.unwrap();
        assert!(page.messages.is_empty(), "after {after}");
        assert!(!page.has_more, "after {after}");
        assert_eq!(page.after, Some(after));
    }
    for before in [1, 2] {
        let page = history_page(
            alice
                .request(History {
                    conversation_id: conv,
                    before,
                    limit: 0,
                    after: Some(1),
                })
                .await
                .unwrap(),
        );
        assert!(
            page.messages.is_empty() && !page.has_more,
            "before {before}"
        );
    }
    alice.send(conv, cmid(1, 4), "m4").await.unwrap();
    let next = alice.history_after(conv, 3, 0).await.unwrap();
    assert_eq!(seqs(&next), [4]);
    assert_eq!(next.messages[0].body, "m4");

    let (carol, _) = server.register("carol").await;
    let refused = carol.history_after(conv, 0, 0).await.unwrap_err();
    assert_eq!(refused.server_code(), Some(ErrorCode::NOT_FOUND));
}
