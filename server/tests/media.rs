//! Integration tests of media against a real `ternd` on both I/O engines: chunked and resumed
//! uploads checked against their SHA-256, ranged downloads, who may read, expiry of uploads nothing
//! attaches, a 50 MiB download that does not stall another user's chat on the same core, and
//! downloads of chunks read lately answered from memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use tern_client::{Client, ClientError};
use tern_protocol::frames::{
    Download, GetMedia, MediaData, MediaInfo, Send, UploadBegin, UploadChunk, UploadFinish,
    UploadState, UploadStatus,
};
use tern_protocol::{Body, ErrorCode};

on_both_engines!(
    upload_attach_download,
    resume_and_refusals,
    unattached_uploads_expire,
    big_download_does_not_stall_chat,
    a_download_read_lately_is_answered_in_memory
);

const CHUNK: usize = 256 * 1024;

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// Deterministic content of `len` bytes.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn call(client: &Client, body: impl Into<Body>) -> Result<Body, ErrorCode> {
    client.request(body).await.map_err(|e| match e {
        ClientError::Server { code, .. } => code,
        other => panic!("unexpected {other:?}"),
    })
}

async fn begin(client: &Client, data: &[u8]) -> UploadState {
    let begin = UploadBegin {
        size: data.len() as u64,
        mime: "application/octet-stream".into(),
        sha256: sha256(data),
    };
    match call(client, begin).await.unwrap() {
        Body::UploadState(s) => s,
        other => panic!("unexpected {other:?}"),
    }
}

async fn upload_from(client: &Client, media_id: u64, data: &[u8], from: usize) -> MediaInfo {
    for (i, chunk) in data[from..].chunks(CHUNK).enumerate() {
        let offset = (from + i * CHUNK) as u64;
        let state = call(
            client,
            UploadChunk {
                media_id,
                offset,
                data: chunk.to_vec(),
            },
        )
        .await
        .unwrap();
        assert!(matches!(state, Body::UploadState(s) if s.received == offset + chunk.len() as u64));
    }
    match call(client, UploadFinish { media_id }).await.unwrap() {
        Body::MediaInfo(info) => info,
        other => panic!("unexpected {other:?}"),
    }
}

async fn upload(client: &Client, data: &[u8]) -> MediaInfo {
    let state = begin(client, data).await;
    upload_from(client, state.media_id, data, 0).await
}

async fn download(client: &Client, media_id: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let request = Download {
            media_id,
            offset: out.len() as u64,
            length: CHUNK as u32,
        };
        match call(client, request).await.unwrap() {
            Body::MediaData(MediaData { data, .. }) => out.extend_from_slice(&data),
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

// Proves an upload in chunks, attached to a message, reaches the recipient as an attachment they
// can download by ranges, byte for byte; and that an outsider cannot see it.
async fn upload_attach_download(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (bob, bob_auth) = server.register("bob").await;
    let (carol, _) = server.register("carol").await;
    let data = content(600 * 1024 + 17, 7);
    let info = upload(&alice, &data).await;
    assert!(info.complete);
    let conv = alice.open_direct(bob_auth.user_id).await.unwrap();
    sync_all(&bob, 0).await;
    let send = Send {
        conversation_id: conv.conversation_id,
        client_msg_id: cmid(1, 1),
        body: String::new(),
        attachments: vec![info.media_id],
    };
    assert!(matches!(call(&alice, send).await.unwrap(), Body::Sent(_)));
    let message = next_message(&bob).await;
    assert_eq!(message.attachments.len(), 1);
    assert_eq!(
        (message.attachments[0].media_id, message.attachments[0].size),
        (info.media_id, data.len() as u64)
    );
    assert_eq!(download(&bob, info.media_id, data.len()).await, data);
    let tail = Download {
        media_id: info.media_id,
        offset: data.len() as u64 - 5,
        length: 100,
    };
    assert!(
        matches!(call(&bob, tail).await.unwrap(), Body::MediaData(d) if d.data == data[data.len() - 5..])
    );
    assert_eq!(
        call(
            &carol,
            GetMedia {
                media_id: info.media_id
            }
        )
        .await
        .err(),
        Some(ErrorCode::NOT_FOUND)
    );
    let history = bob.history(conv.conversation_id, 0, 0).await.unwrap();
    assert_eq!(
        history.messages[0].attachments[0].mime,
        "application/octet-stream"
    );
}

// Proves an upload resumes on a new connection from what the server holds, and the refusals the
// spec names: a wrong offset, a wrong checksum, too large an upload, and an unfinished attachment.
async fn resume_and_refusals(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Ternd::start_in(engine, dir.path(), &["--media-bytes-max", "2000000"]);
    let (alice, auth) = server.register("alice").await;
    let data = content(3 * CHUNK + 100, 3);
    let state = begin(&alice, &data).await;
    let first = UploadChunk {
        media_id: state.media_id,
        offset: 0,
        data: data[..CHUNK].to_vec(),
    };
    call(&alice, first).await.unwrap();
    let wrong = UploadChunk {
        media_id: state.media_id,
        offset: 5,
        data: vec![1],
    };
    assert_eq!(call(&alice, wrong).await.err(), Some(ErrorCode::CONFLICT));
    alice.close().await;

    let alice = server.client().await;
    alice.resume(auth.token.unwrap()).await.unwrap();
    let status = call(
        &alice,
        UploadStatus {
            media_id: state.media_id,
        },
    )
    .await
    .unwrap();
    assert!(matches!(status, Body::UploadState(s) if s.received == CHUNK as u64));
    let info = upload_from(&alice, state.media_id, &data, CHUNK).await;
    assert!(info.complete);
    assert_eq!(download(&alice, info.media_id, data.len()).await, data);

    let mut tampered = begin(&alice, &data).await;
    tampered.received = 0;
    let mut bad = data.clone();
    bad[10] ^= 1;
    for (i, chunk) in bad.chunks(CHUNK).enumerate() {
        call(
            &alice,
            UploadChunk {
                media_id: tampered.media_id,
                offset: (i * CHUNK) as u64,
                data: chunk.to_vec(),
            },
        )
        .await
        .unwrap();
    }
    let finish = call(
        &alice,
        UploadFinish {
            media_id: tampered.media_id,
        },
    )
    .await;
    assert_eq!(finish.err(), Some(ErrorCode::CHECKSUM_MISMATCH));

    let big = UploadBegin {
        size: 3_000_000,
        mime: "video/mp4".into(),
        sha256: [0; 32],
    };
    assert_eq!(
        call(&alice, big).await.err(),
        Some(ErrorCode::MEDIA_TOO_LARGE)
    );
    let (_bob, bob) = server.register("bob").await;
    let conv = alice.open_direct(bob.user_id).await.unwrap();
    let unfinished = begin(&alice, &data).await;
    let send = Send {
        conversation_id: conv.conversation_id,
        client_msg_id: cmid(1, 1),
        body: "x".into(),
        attachments: vec![unfinished.media_id],
    };
    assert_eq!(call(&alice, send).await.err(), Some(ErrorCode::NOT_FOUND));
}

// Proves a completed upload that no message attaches is discarded after the configured time,
// while an attached one stays.
async fn unattached_uploads_expire(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--media-unreferenced-ttl-ms",
        "200",
        "--media-sweep-interval-ms",
        "100",
    ];
    let server = Ternd::start_in(engine, dir.path(), &flags);
    let (alice, _) = server.register("alice").await;
    let (_bob, bob) = server.register("bob").await;
    let kept = upload(&alice, &content(1000, 1)).await;
    let dropped = upload(&alice, &content(1000, 2)).await;
    let conv = alice.open_direct(bob.user_id).await.unwrap();
    let send = Send {
        conversation_id: conv.conversation_id,
        client_msg_id: cmid(1, 1),
        body: String::new(),
        attachments: vec![kept.media_id],
    };
    call(&alice, send).await.unwrap();
    let deadline = Instant::now() + EVENT_WAIT;
    while call(
        &alice,
        GetMedia {
            media_id: dropped.media_id,
        },
    )
    .await
    .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the unattached upload was not discarded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(call(
        &alice,
        GetMedia {
            media_id: kept.media_id
        }
    )
    .await
    .is_ok());
}

// Proves a 50 MiB download, chunk by chunk, and two other users chatting on the same (single)
// core are served side by side: every message sent during the download is acknowledged, and the
// download arrives byte for byte. How long the acknowledgements take beside it is measured by
// `tern-bench`'s W6, not here.
async fn big_download_does_not_stall_chat(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    // The chat loop sends as fast as the server answers, which is above the default send rate.
    let flags = [&["--cores", "1"][..], &NO_RATE_LIMITS[..]].concat();
    let server = Ternd::start_in(engine, dir.path(), &flags);
    let (alice, _) = server.register("alice").await;
    let (carol, _) = server.register("carol").await;
    let (_dave, dave) = server.register("dave").await;
    let data = content(50 << 20, 9);
    let info = upload(&alice, &data).await;
    let chat = carol.open_direct(dave.user_id).await.unwrap();
    let downloader = tokio::spawn(async move {
        let got = download(&alice, info.media_id, data.len()).await;
        assert!(got == data, "the download is byte for byte the upload");
    });
    let mut sent = 0u64;
    while !downloader.is_finished() && sent < 2_000 {
        carol
            .send(chat.conversation_id, cmid(2, sent), "still snappy?")
            .await
            .unwrap();
        sent += 1;
    }
    downloader.await.unwrap();
    assert!(
        sent > 5,
        "the chat was served while the download ran ({sent} messages)"
    );
    let history = carol.history(chat.conversation_id, 0, 100).await.unwrap();
    assert_eq!(
        history.messages.last().map(|m| m.seq),
        Some(sent),
        "every message sent beside the download is stored, in order"
    );
}

// Proves a user cannot start more unfinished uploads than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_uploads_are_limited() {
    let server = Ternd::start("epoll");
    let (alice, _) = server.register("alice").await;
    for seed in 0..16u8 {
        begin(&alice, &content(10, seed)).await;
    }
    let one_more = UploadBegin {
        size: 10,
        mime: "text/plain".into(),
        sha256: [0; 32],
    };
    assert_eq!(
        call(&alice, one_more).await.err(),
        Some(ErrorCode::LIMIT_EXCEEDED)
    );
}

// Proves that after a clean restart a download's chunks that are only in blob files are read by
// the reader threads, and that the same download again, its chunks now in the media cache, is
// answered by the core from memory, byte for byte both times.
async fn a_download_read_lately_is_answered_in_memory(engine: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Ternd::start_in(engine, dir.path(), &[]);
    let (alice, auth) = server.register("alice").await;
    let token = auth.token.unwrap();
    let data = content(3 * CHUNK, 11);
    let info = upload(&alice, &data).await;
    assert!(info.complete);
    drop(alice);
    // A clean shutdown flushes the chunks to blob files; the restart starts with empty caches.
    assert!(server.terminate().success());
    let server = Ternd::start_in(engine, dir.path(), &[]);
    let alice = server.client().await;
    alice.resume(token).await.unwrap();
    let counts = |metrics: &str| {
        (
            total(metrics, "tern_core_store_reads_microseconds_count"),
            total(metrics, "tern_core_reads_in_memory_total"),
        )
    };
    let (_, metrics) = get(server.metrics_addr, "/metrics").await;
    let (off_core, in_memory) = counts(&metrics);
    assert_eq!(download(&alice, info.media_id, data.len()).await, data);
    let (_, metrics) = get(server.metrics_addr, "/metrics").await;
    let (off_core_then, in_memory_then) = counts(&metrics);
    assert!(
        off_core_then > off_core,
        "nothing went to a reader: {metrics}"
    );
    assert_eq!(off_core_then + in_memory_then, off_core + in_memory + 3);
    assert_eq!(download(&alice, info.media_id, data.len()).await, data);
    let (_, metrics) = get(server.metrics_addr, "/metrics").await;
    assert_eq!(
        counts(&metrics),
        (off_core_then, in_memory_then + 3),
        "{metrics}"
    );
}
