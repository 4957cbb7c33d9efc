//! Integration test of the metrics and health endpoint of a real `ternd`: `/healthz` answers, and
//! `/metrics` counts what the test did (connections, frames, messages, appended updates, group
//! commits, reads in memory and off the cores, errors by code) and shows the RocksDB gauges; that
//! reads that miss memory after a restart go to the reader threads; and that the `Ack` of a
//! device back from offline reads back on the core only what its pages did not bring.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::*;
use tern_client::Event;
use tern_protocol::types::ReceiptKind;
use tern_protocol::UpdateKind;

on_both_engines!(
    metrics_count_what_happened,
    reads_that_miss_memory_go_to_the_readers,
    an_ack_after_sync_pages_reads_back_only_what_came_before
);

// Proves /healthz answers 200, and /metrics reflects a known workload: 3 messages stored, each
// appended to 2 logs, frames both ways, commits and their batch sizes, updates delivered by sync and
// live, one NOT_FOUND, open connections, RocksDB gauges.
async fn metrics_count_what_happened(engine: &'static str) {
    let server = Ternd::start(engine);
    let (status, body) = get(server.metrics_addr, "/healthz").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );

    let (alice, _) = server.register("alice").await;
    let (bob_client, bob) = server.register("bob").await;
    let conv = alice.open_direct(bob.user_id).await.unwrap();
    for n in 1..=3u64 {
        alice
            .send(conv.conversation_id, cmid(1, n), "counted")
            .await
            .unwrap();
    }
    assert!(alice.history(999, 0, 0).await.is_err());
    // The appends to both logs happen after the Sent replies; wait for them.
    assert_eq!(bodies(&sync_until(&alice, 3).await).len(), 3);
    let synced = sync_until(&bob_client, 3).await;
    assert_eq!(bodies(&synced).len(), 3);
    let cursor = synced.last().map_or(0, |u| u.user_seq);

    let (status, metrics) = get(server.metrics_addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(total(&metrics, "tern_messages_stored_total"), 3);
    assert_eq!(total(&metrics, "tern_updates_appended_total"), 6);
    assert_eq!(total(&metrics, "tern_connections"), 2);
    assert!(total(&metrics, "tern_frames_in_total") >= 10);
    assert!(total(&metrics, "tern_frames_out_total") >= 10);
    assert!(total(&metrics, "tern_commit_latency_microseconds_count") >= 3);
    assert!(total(&metrics, "tern_core_turn_microseconds_count") >= 3);
    // Every read that held a frame is timed once: the requests above came in several reads.
    let reads = total(&metrics, "tern_core_frames_microseconds_count");
    assert!(reads >= 3 && reads <= total(&metrics, "tern_frames_in_total"));
    // Both syncs read a log that was not empty, all of it still in the memtables: the cores
    // read it themselves.
    assert!(total(&metrics, "tern_core_reads_in_memory_total") >= 2);
    assert_eq!(
        total(&metrics, "tern_core_store_reads_microseconds_count"),
        0
    );
    assert_eq!(total(&metrics, "tern_storage_errors_total"), 0);
    // Every delivery was confirmed in time: nothing was delivered again.
    assert!(metrics.contains("# TYPE tern_fanout_retries_total counter"));
    assert_eq!(total(&metrics, "tern_fanout_retries_total"), 0);
    assert!(total(&metrics, "tern_commit_writes_total") >= 9);
    // Three messages never fill a mailbox.
    assert!(metrics.contains("# TYPE tern_mail_held gauge"));
    assert_eq!(total(&metrics, "tern_mail_held"), 0);
    assert_eq!(total(&metrics, "tern_mail_backlogs_total"), 0);
    assert!(
        metrics.contains("tern_errors_total{code=\"NOT_FOUND\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("tern_push_sent_total 0\n"));
    assert!(total(&metrics, "tern_estimate_num_keys") > 0);
    // Both logs were read whole by Sync (perhaps more than once while waiting); a group commit's
    // batch sizes add up to its writes.
    assert!(total(&metrics, "tern_updates_delivered_total") >= 6);
    assert_eq!(
        total(&metrics, "tern_commit_batch_writes_sum"),
        total(&metrics, "tern_commit_writes_total")
    );

    // Now live: the next message reaches Bob as an event.
    alice
        .send(conv.conversation_id, cmid(1, 4), "live")
        .await
        .unwrap();
    assert_eq!(next_message_after(&bob_client, cursor).await.body, "live");
    let (_, metrics) = get(server.metrics_addr, "/metrics").await;
    let live: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("tern_updates_delivered_total") && l.contains("via=\"live\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(live >= 1, "{metrics}");

    let (status, _) = get(server.metrics_addr, "/nothing").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

// Proves that after a clean restart, when the messages are only in table files, a `History` is
// read by the reader threads and answers with everything, that a sync after it answers with
// everything too, and that the same `History` again, its blocks now cached, is read by the core.
async fn reads_that_miss_memory_go_to_the_readers(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Ternd::start_in(engine, dir.path(), &[]);
    let (alice, _) = server.register("alice").await;
    let (bob, bob_auth) = server.register("bob").await;
    let token = bob_auth.token.unwrap();
    let conv = alice.open_direct(bob_auth.user_id).await.unwrap();
    for n in 1..=5u64 {
        alice
            .send(conv.conversation_id, cmid(1, n), &format!("kept {n}"))
            .await
            .unwrap();
    }
    assert_eq!(bodies(&sync_until(&bob, 5).await).len(), 5);
    drop((alice, bob));
    // A clean shutdown flushes the memtables to table files; the restart starts with empty caches.
    assert!(server.terminate().success());
    let server = Ternd::start_in(engine, dir.path(), &[]);
    let bob = server.client().await;
    bob.resume(token).await.unwrap();
    // History first: the sync's read of the messages would bring their blocks into the cache.
    let expected: Vec<String> = (1..=5).map(|n| format!("kept {n}")).collect();
    let page = bob.history(conv.conversation_id, 0, 50).await.unwrap();
    let history: Vec<&str> = page.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(history, expected);
    let synced = sync_all(&bob, 0).await;
    assert_eq!(bodies(&synced), expected);
    let (_, metrics) = get(server.metrics_addr, "/metrics").await;
    assert!(
        total(&metrics, "tern_core_store_reads_microseconds_count") >= 1,
        "{metrics}"
    );
    let in_memory = total(&metrics, "tern_core_reads_in_memory_total");
    let again = bob.history(conv.conversation_id, 0, 50).await.unwrap();
    assert_eq!(again.messages.len(), 5);
    let (_, metrics) = get(server.metrics_addr, "/metrics").await;
    assert!(total(&metrics, "tern_core_reads_in_memory_total") > in_memory);
}

/// Waits until the server counts `connections` open connections.
async fn connections_settle(server: &Ternd, connections: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, metrics) = get(server.metrics_addr, "/metrics").await;
        if total(&metrics, "tern_connections") == connections {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Waits until `client`'s log holds a delivered receipt from `reader` up to `seq`.
async fn delivered_receipt(client: &tern_client::Client, reader: u64, seq: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let updates = sync_all(client, 0).await;
        if updates.iter().any(|u| {
            matches!(&u.kind, UpdateKind::Receipt(r)
                if r.kind == ReceiptKind::Delivered && r.user_id == reader && r.up_to_seq == seq)
        }) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivered receipt up to {seq}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

// Proves that the `Ack` of a device back from offline, after it synced what came meanwhile, reads
// nothing back from the log on the core and still tells the sender of the delivery; and that when
// the device had taken updates live before it went away without acknowledging them, only those
// are read back.
async fn an_ack_after_sync_pages_reads_back_only_what_came_before(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (bob, bob_auth) = server.register("bob").await;
    let token = bob_auth.token.unwrap();
    let conv = alice.open_direct(bob_auth.user_id).await.unwrap();
    let send = |n: u64| {
        let alice = &alice;
        async move {
            alice
                .send(conv.conversation_id, cmid(1, n), &format!("m{n}"))
                .await
                .unwrap()
        }
    };
    // Bob goes away; three messages come; his device comes back, syncs and acknowledges.
    drop(bob);
    connections_settle(&server, 1).await;
    for n in 1..=3 {
        send(n).await;
    }
    let bob = server.client().await;
    bob.resume(token).await.unwrap();
    let acked = sync_all(&bob, 0).await.last().unwrap().user_seq;
    bob.ack(acked).await.unwrap();
    delivered_receipt(&alice, bob_auth.user_id, 3).await;
    let (_, metrics) = get(server.metrics_addr, "/metrics").await;
    assert!(metrics.contains("tern_core_ack_updates_read_total"));
    assert_eq!(total(&metrics, "tern_core_ack_updates_read_total"), 0);

    // Again, but the device takes two messages live and goes away before it acknowledges them:
    // what it was shown live is forgotten once a message comes while it is away.
    for n in 4..=5 {
        send(n).await;
    }
    let event = bob
        .wait_for_event(
            |e| matches!(e, Event::Update(u) if matches!(&u.kind, UpdateKind::Message(m) if m.body == "m5")),
            std::time::Duration::from_secs(10),
        )
        .await
        .expect("m5, live");
    let Event::Update(update) = event else {
        unreachable!()
    };
    let cursor = update.user_seq;
    assert!(cursor > acked);
    drop(bob);
    connections_settle(&server, 1).await;
    send(6).await;
    let bob = server.client().await;
    bob.resume(token).await.unwrap();
    let last = sync_all(&bob, cursor).await.last().unwrap().user_seq;
    bob.ack(last).await.unwrap();
    delivered_receipt(&alice, bob_auth.user_id, 6).await;
    let (_, metrics) = get(server.metrics_addr, "/metrics").await;
    let read_back = total(&metrics, "tern_core_ack_updates_read_total");
    assert_eq!(
        read_back,
        cursor - acked,
        "only what was taken live is read back"
    );
}
