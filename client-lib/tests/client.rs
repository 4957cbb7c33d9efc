//! The client against a scripted fake server over real TCP sockets on 127.0.0.1: the handshake,
//! request/reply correlation, error replies, events, time-outs, protocol errors and closing; and a
//! session passing over `Skipped` updates.
//!
//! Nothing here sleeps: every step waits on a future (a reply, a frame, an event), bounded by
//! `support::within` so that a bug fails the test instead of hanging it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{connected, hello_of, options, welcome, within, FakeServer};
use tern_client::protocol::frames::{
    self, Ack, Authenticated, GoAway, Hello, Ok as OkReply, Ping, Pong, PresenceEvent, SyncPage,
    TypingEvent, UpdateEvent,
};
use tern_client::protocol::types::{Presence, ReceiptKind};
use tern_client::protocol::update::{Receipt, Skipped};
use tern_client::protocol::{Body, DecodeError, ErrorCode, Update, UpdateKind};
use tern_client::{
    Client, ClientError, Credentials, Event, MemoryStorage, Session, SessionEvent, SessionOptions,
    Storage, StoredSession, StoredState,
};

fn error_frame(code: ErrorCode, retry_after_ms: u32, message: &str) -> frames::Error {
    frames::Error {
        code,
        retry_after_ms,
        message: message.into(),
    }
}

fn typing_event(user_id: u64) -> TypingEvent {
    TypingEvent {
        conversation_id: 9,
        user_id,
        active: true,
    }
}

fn nonce_of(frame: &tern_client::protocol::Frame) -> u64 {
    match &frame.body {
        Body::Ping(ping) => ping.nonce,
        other => panic!("expected Ping, got {other:?}"),
    }
}

// Proves the handshake: the first frame is a Hello offering exactly version 1 under a non-zero
// request id with the configured client name, and the client exposes the server's Welcome.
#[tokio::test]
async fn handshake_sends_hello_and_exposes_welcome() {
    let server = FakeServer::bind().await;
    let (client, (_peer, hello)) = within(async {
        tokio::join!(Client::connect(server.addr, options()), async {
            let mut peer = server.accept().await;
            let hello = peer.handshake().await;
            (peer, hello)
        })
    })
    .await;
    let client = client.unwrap();
    assert_ne!(hello.request_id, 0);
    assert_eq!(
        hello_of(&hello),
        &Hello {
            min_version: 1,
            max_version: 1,
            client_name: "tern-client-tests/0".into(),
        }
    );
    assert_eq!(client.welcome(), &welcome());
    assert!(!client.is_closed());
}

// Proves that an Error answering Hello fails connect with ClientError::Server carrying the code.
#[tokio::test]
async fn handshake_error_becomes_server_error() {
    let server = FakeServer::bind().await;
    let (client, _peer) = within(async {
        tokio::join!(Client::connect(server.addr, options()), async {
            let mut peer = server.accept().await;
            let hello = peer.expect_frame().await;
            let refusal = error_frame(ErrorCode::UNSUPPORTED_VERSION, 0, "v2 only");
            peer.send(hello.request_id, refusal).await;
            peer
        })
    })
    .await;
    match client.unwrap_err() {
        ClientError::Server { code, message, .. } => {
            assert_eq!(code, ErrorCode::UNSUPPORTED_VERSION);
            assert_eq!(message, "v2 only");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
}

// Proves that a Welcome naming a version the client did not offer fails connect.
#[tokio::test]
async fn welcome_with_another_version_is_refused() {
    let server = FakeServer::bind().await;
    let (client, _peer) = within(async {
        tokio::join!(Client::connect(server.addr, options()), async {
            let mut peer = server.accept().await;
            let hello = peer.expect_frame().await;
            let mut newer = welcome();
            newer.version = 2;
            peer.send(hello.request_id, newer).await;
            peer
        })
    })
    .await;
    assert!(matches!(
        client.unwrap_err(),
        ClientError::UnsupportedVersion { version: 2 }
    ));
}

/// Three pings in flight, answered in reverse order with an event between the replies.
async fn replies_in_reverse_order_with_an_event_between() {
    let (client, mut peer, _server) = connected(options()).await;
    let server = async {
        let mut requests = Vec::new();
        for _ in 0..3 {
            requests.push(peer.expect_frame().await);
        }
        let mut ids: Vec<u32> = requests.iter().map(|frame| frame.request_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3, "request ids must be distinct");
        assert!(!ids.contains(&0), "request ids must be non-zero");

        for (i, request) in requests.iter().rev().enumerate() {
            let nonce = nonce_of(request);
            peer.send(request.request_id, Pong { nonce }).await;
            if i == 0 {
                peer.send(0, typing_event(42)).await;
            }
        }
    };
    let (first, second, third, ()) =
        within(async { tokio::join!(client.ping(1), client.ping(2), client.ping(3), server) })
            .await;
    let pongs = [first, second, third].map(|pong| pong.expect("a Pong"));
    assert_eq!(pongs, [1, 2, 3]);
    assert_eq!(
        within(client.next_event()).await,
        Some(Event::Typing(typing_event(42)))
    );
}

// Proves request/reply correlation: each reply reaches the request with its id whatever the
// order of arrival, and an event between replies goes to the event stream.
#[tokio::test]
async fn replies_are_matched_by_request_id_in_any_order() {
    replies_in_reverse_order_with_an_event_between().await;
}

// Proves the same on a multi-thread runtime, where the tasks run on other threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_matched_on_a_multi_thread_runtime() {
    replies_in_reverse_order_with_an_event_between().await;
}

// Proves that one client shared by many spawned tasks gets every reply to the right task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_client_serves_concurrent_tasks() {
    const TASKS: u64 = 64;
    let (client, mut peer, _server) = connected(options()).await;
    let client = Arc::new(client);
    let tasks: Vec<_> = (0..TASKS)
        .map(|nonce| {
            let client = Arc::clone(&client);
            tokio::spawn(async move { (nonce, client.ping(nonce).await) })
        })
        .collect();
    let mut requests = Vec::new();
    for _ in 0..TASKS {
        requests.push(within(peer.expect_frame()).await);
    }
    for request in requests.iter().rev() {
        let nonce = nonce_of(request);
        peer.send(request.request_id, Pong { nonce }).await;
    }
    for task in tasks {
        let (nonce, pong) = within(task).await.unwrap();
        assert_eq!(pong.unwrap(), nonce);
    }
}

// Proves that an Error reply becomes ClientError::Server with code, message and retry time,
// and that the connection stays usable afterwards.
#[tokio::test]
async fn error_reply_becomes_server_error() {
    let (client, mut peer, _server) = connected(options()).await;
    let (reply, ()) = within(async {
        tokio::join!(client.lookup_user("nobody"), async {
            let request = peer.expect_frame().await;
            assert!(matches!(request.body, Body::LookupUser(_)));
            let refusal = error_frame(ErrorCode::RATE_LIMITED, 1500, "slow down");
            peer.send(request.request_id, refusal).await;
        })
    })
    .await;
    let error = reply.unwrap_err();
    assert_eq!(error.server_code(), Some(ErrorCode::RATE_LIMITED));
    match error {
        ClientError::Server {
            message,
            retry_after_ms,
            ..
        } => {
            assert_eq!(message, "slow down");
            assert_eq!(retry_after_ms, 1500);
        }
        other => panic!("expected a server error, got {other:?}"),
    }

    let (pong, ()) = within(async {
        tokio::join!(client.ping(5), async {
            let request = peer.expect_frame().await;
            peer.send(request.request_id, Pong { nonce: 5 }).await;
        })
    })
    .await;
    assert_eq!(pong.unwrap(), 5);
}

// Proves event delivery: every event type comes out of next_event in arrival order, including a
// connection-level error and the error answering a failed notification; try_next_event does not
// wait.
#[tokio::test]
async fn events_arrive_through_next_event() {
    let (client, mut peer, _server) = connected(options()).await;
    assert_eq!(client.try_next_event(), None);

    let update = Update {
        user_seq: 3,
        kind: UpdateKind::Receipt(Receipt {
            conversation_id: 9,
            user_id: 42,
            kind: ReceiptKind::Read,
            up_to_seq: 7,
            ts: 1_700_000_000_000,
        }),
    };
    let presence = Presence {
        user_id: 42,
        online: false,
        last_seen: Some(1_700_000_000_000),
    };
    let go_away = GoAway {
        reconnect_after_ms: 250,
        message: "draining".into(),
    };
    let overloaded = error_frame(ErrorCode::INTERNAL, 0, "hiccup");
    let forbidden = error_frame(ErrorCode::FORBIDDEN, 0, "not a member");

    within(client.typing(9, true)).await.unwrap();
    let typing = within(peer.expect_frame()).await;
    assert!(matches!(typing.body, Body::Typing(_)));
    assert_ne!(typing.request_id, 0);

    peer.send(
        0,
        UpdateEvent {
            update: update.clone(),
        },
    )
    .await;
    peer.send(
        0,
        PresenceEvent {
            presence: presence.clone(),
        },
    )
    .await;
    peer.send(0, typing_event(42)).await;
    peer.send(0, go_away.clone()).await;
    peer.send(0, overloaded.clone()).await;
    peer.send(typing.request_id, forbidden.clone()).await;

    let expected = [
        Event::Update(update),
        Event::Presence(presence),
        Event::Typing(typing_event(42)),
        Event::GoAway(go_away),
        Event::Error(overloaded),
        Event::Error(forbidden),
    ];
    for event in expected {
        assert_eq!(within(client.next_event()).await, Some(event));
    }

    // A reply travels behind an event sent before it, so once the ping returns the event is buffered.
    let (pong, ()) = within(async {
        tokio::join!(client.ping(8), async {
            let request = peer.expect_frame().await;
            peer.send(0, typing_event(43)).await;
            peer.send(request.request_id, Pong { nonce: 8 }).await;
        })
    })
    .await;
    assert_eq!(pong.unwrap(), 8);
    assert_eq!(
        client.try_next_event(),
        Some(Event::Typing(typing_event(43)))
    );
    assert_eq!(client.try_next_event(), None);
}

// Proves that wait_for_event skips events until one matches, and times out when none does.
#[tokio::test]
async fn wait_for_event_skips_to_the_first_match() {
    let (client, mut peer, _server) = connected(options()).await;
    for user_id in 1..=3 {
        peer.send(0, typing_event(user_id)).await;
    }
    let goodbye = GoAway {
        reconnect_after_ms: 0,
        message: "bye".into(),
    };
    peer.send(0, goodbye.clone()).await;

    let event = client
        .wait_for_event(
            |event| matches!(event, Event::GoAway(_)),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(event, Event::GoAway(goodbye));

    let nothing = client
        .wait_for_event(|_| true, Duration::from_millis(50))
        .await;
    assert!(matches!(nothing, Err(ClientError::Timeout)));
}

// Proves the time-out: an unanswered request fails with Timeout, a late reply to it is dropped,
// and the next request on the same connection gets its own reply.
#[tokio::test]
async fn request_times_out_and_the_connection_stays_usable() {
    let options = options().with_request_timeout(Duration::from_millis(200));
    let (client, mut peer, _server) = connected(options).await;

    let (reply, unanswered) =
        within(async { tokio::join!(client.ping(1), peer.expect_frame()) }).await;
    assert!(matches!(reply, Err(ClientError::Timeout)), "{reply:?}");

    peer.send(unanswered.request_id, Pong { nonce: 1 }).await;
    let (pong, ()) = within(async {
        tokio::join!(client.ping(2), async {
            let request = peer.expect_frame().await;
            assert_ne!(request.request_id, unanswered.request_id);
            peer.send(request.request_id, Pong { nonce: 2 }).await;
        })
    })
    .await;
    assert_eq!(pong.unwrap(), 2);
    assert_eq!(client.try_next_event(), None, "a late Pong is not an event");
}

// Proves closing by the server: every request in flight fails with Closed, events received
// before the close are still delivered, then next_event ends, and later calls fail with Closed.
#[tokio::test]
async fn pending_requests_fail_with_closed_when_the_server_hangs_up() {
    let (client, mut peer, _server) = connected(options()).await;
    let (first, second, ()) = within(async {
        tokio::join!(client.ping(1), client.ping(2), async move {
            peer.expect_frame().await;
            peer.expect_frame().await;
            peer.send(0, typing_event(42)).await;
            drop(peer);
        })
    })
    .await;
    assert!(matches!(first, Err(ClientError::Closed)), "{first:?}");
    assert!(matches!(second, Err(ClientError::Closed)), "{second:?}");

    assert_eq!(
        within(client.next_event()).await,
        Some(Event::Typing(typing_event(42)))
    );
    assert_eq!(within(client.next_event()).await, None);
    assert!(client.is_closed());
    assert!(matches!(
        within(client.ping(3)).await,
        Err(ClientError::Closed)
    ));
    assert!(matches!(
        within(client.ack(1)).await,
        Err(ClientError::Closed)
    ));
}

// Proves forward compatibility and body errors: frame types this version does not know are
// skipped (replies and events alike), while a known reply whose body is malformed fails just its
// request with a Protocol error and leaves the connection open.
#[tokio::test]
async fn unknown_frame_types_are_skipped_and_bad_bodies_fail_one_request() {
    let (client, mut peer, _server) = connected(options()).await;
    let (pong, ()) = within(async {
        tokio::join!(client.ping(1), async {
            let request = peer.expect_frame().await;
            let id = request.request_id.to_be_bytes();
            // length 8: type 0x7FF0 (an unknown reply), this request's id, two body bytes.
            let unknown_reply = [&[0, 0, 0, 8, 0x7F, 0xF0][..], &id, &[1, 2]].concat();
            // length 6: type 0xFFF0 (an unknown event), request id 0.
            let unknown_event = [0, 0, 0, 6, 0xFF, 0xF0, 0, 0, 0, 0];
            peer.send_raw(&unknown_reply).await;
            peer.send_raw(&unknown_event).await;
            peer.send(request.request_id, Pong { nonce: 1 }).await;
        })
    })
    .await;
    assert_eq!(pong.unwrap(), 1);

    let (malformed, ()) = within(async {
        tokio::join!(client.ping(2), async {
            let request = peer.expect_frame().await;
            let id = request.request_id.to_be_bytes();
            // A Pong (0x4003) whose u64 nonce is cut to four bytes.
            let truncated_pong = [&[0, 0, 0, 10, 0x40, 0x03][..], &id, &[0, 0, 0, 2]].concat();
            peer.send_raw(&truncated_pong).await;
        })
    })
    .await;
    match malformed {
        Err(ClientError::Protocol(error)) => {
            assert!(
                matches!(error.error, DecodeError::Truncated { .. }),
                "{error:?}"
            );
            assert_eq!(error.error.code(), ErrorCode::MALFORMED);
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }

    let (pong, ()) = within(async {
        tokio::join!(client.ping(3), async {
            let request = peer.expect_frame().await;
            peer.send(request.request_id, Pong { nonce: 3 }).await;
        })
    })
    .await;
    assert_eq!(pong.unwrap(), 3);
    assert_eq!(client.try_next_event(), None);
}

// Proves that a frame above the client's limit is fatal: it is refused from its length alone,
// the waiting request and every later call fail with the Protocol error, and the client hangs up.
#[tokio::test]
async fn oversized_frame_closes_the_connection_with_a_protocol_error() {
    let (client, mut peer, _server) = connected(options().with_max_frame_bytes(1024)).await;
    let (reply, ()) = within(async {
        tokio::join!(client.ping(1), async {
            let request = peer.expect_frame().await;
            let id = request.request_id.to_be_bytes();
            // A Pong announcing 4096 bytes after the length field; the body never comes.
            peer.send_raw(&[&[0, 0, 0x10, 0, 0x40, 0x03][..], &id].concat())
                .await;
        })
    })
    .await;
    let is_too_large = |result: &Result<u64, ClientError>| {
        matches!(
            result,
            Err(ClientError::Protocol(error))
                if matches!(error.error, DecodeError::FrameTooLarge { max: 1024, .. })
        )
    };
    assert!(is_too_large(&reply), "{reply:?}");
    assert!(client.is_closed());
    assert!(is_too_large(&within(client.ping(2)).await));
    assert_eq!(within(client.next_event()).await, None);
    assert_eq!(within(peer.recv()).await, None, "the client must hang up");
}

// Proves that a reply of the wrong type fails a typed helper with UnexpectedReply.
#[tokio::test]
async fn wrong_reply_type_is_unexpected_reply() {
    let (client, mut peer, _server) = connected(options()).await;
    let (reply, ()) = within(async {
        tokio::join!(client.ping(1), async {
            let request = peer.expect_frame().await;
            peer.send(request.request_id, OkReply {}).await;
        })
    })
    .await;
    assert!(
        matches!(
            reply,
            Err(ClientError::UnexpectedReply {
                expected: "Pong",
                got: "Ok"
            })
        ),
        "{reply:?}"
    );
}

// Proves that misuse is caught before anything is sent: a notification through request, a request
// through notify, a server-only frame, and a frame above the limit the server announced.
#[tokio::test]
async fn unsendable_frames_fail_locally() {
    let server = FakeServer::bind().await;
    let (client, mut peer) = within(async {
        tokio::join!(Client::connect(server.addr, options()), async {
            let mut peer = server.accept().await;
            let hello = peer.expect_frame().await;
            let mut small = welcome();
            small.limits.frame_bytes_max = 1024;
            peer.send(hello.request_id, small).await;
            peer
        })
    })
    .await;
    let client = client.unwrap();

    let usage = |result: Result<(), ClientError>| matches!(result, Err(ClientError::Usage { .. }));
    assert!(usage(client.request(Ack { up_to: 1 }).await.map(drop)));
    assert!(usage(client.notify(Ping { nonce: 1 }).await));
    assert!(usage(client.request(Pong { nonce: 1 }).await.map(drop)));
    let too_long = client.send(9, [0; 16], &"x".repeat(2000)).await;
    assert!(
        matches!(too_long, Err(ClientError::Encode(_))),
        "{too_long:?}"
    );

    let (pong, ()) = within(async {
        tokio::join!(client.ping(4), async {
            let request = peer.expect_frame().await;
            assert_eq!(nonce_of(&request), 4, "nothing else was sent");
            peer.send(request.request_id, Pong { nonce: 4 }).await;
        })
    })
    .await;
    assert_eq!(pong.unwrap(), 4);
}

// Proves a clean close: frames queued before close are written, then the client's side ends
// (the server reads EOF), close returns once the server closes too, and later calls fail.
#[tokio::test]
async fn close_flushes_queued_frames_then_shuts_down() {
    let (client, mut peer, _server) = connected(options()).await;
    within(client.ack(7)).await.unwrap();
    let ((), ()) = within(async {
        tokio::join!(client.close(), async move {
            let ack = peer.expect_frame().await;
            assert_eq!(ack.body, Body::Ack(Ack { up_to: 7 }));
            assert_ne!(ack.request_id, 0);
            assert_eq!(peer.recv().await, None);
            drop(peer);
        })
    })
    .await;
    assert!(client.is_closed());
    assert!(matches!(client.ping(1).await, Err(ClientError::Closed)));
    assert_eq!(within(client.next_event()).await, None);
    within(client.close()).await;
}

// Proves that dropping the client ends its background tasks and closes the socket.
#[tokio::test]
async fn dropping_the_client_closes_the_connection() {
    let (client, mut peer, _server) = connected(options()).await;
    drop(client);
    assert_eq!(within(peer.recv()).await, None);
}

// Proves `history_after` sends a forward History (`after` set, no `before`) and returns the page
// a revision 1.1 server echoes `after` in, while a server older than 1.1, whose reply is a backward
// page without the echo, makes it fail with `Unsupported` rather than return the wrong messages.
#[tokio::test]
async fn history_after_tells_a_forward_page_from_an_old_servers_backward_one() {
    let (client, mut peer, _server) = connected(options()).await;
    for echo in [Some(41), None] {
        let (reply, ()) = within(async {
            tokio::join!(client.history_after(7, 41, 20), async {
                let request = peer.expect_frame().await;
                match request.body {
                    Body::History(history) => {
                        assert_eq!(history.after, Some(41));
                        assert_eq!((history.before, history.limit), (0, 20));
                    }
                    other => panic!("expected History, got {other:?}"),
                }
                let page = frames::HistoryPage {
                    conversation_id: 7,
                    messages: Vec::new(),
                    has_more: false,
                    after: echo,
                };
                peer.send(request.request_id, page).await;
            })
        })
        .await;
        match echo {
            Some(_) => assert_eq!(reply.unwrap().after, Some(41)),
            None => assert!(
                matches!(reply, Err(ClientError::Unsupported { .. })),
                "{reply:?}"
            ),
        }
    }
}

// Proves a session passes over `Skipped` updates (spec §10.9.9): the app never sees one, whether it
// comes in a sync page or live, between updates or last, and the stored cursor and the `Ack` move
// past it as past any other update.
#[tokio::test]
async fn session_passes_over_skipped_updates() {
    let server = FakeServer::bind().await;
    let storage = Arc::new(MemoryStorage::with_state(StoredState {
        session: Some(StoredSession {
            user_id: 42,
            device_id: 1,
            username: "ada".into(),
            token: [7; 32],
        }),
        ..StoredState::default()
    }));
    let receipt = |user_seq| Update {
        user_seq,
        kind: UpdateKind::Receipt(Receipt {
            conversation_id: 9,
            user_id: 43,
            kind: ReceiptKind::Read,
            up_to_seq: user_seq,
            ts: 1_700_000_000_000,
        }),
    };
    let skipped = |user_seq| Update {
        user_seq,
        kind: UpdateKind::Skipped(Skipped {}),
    };

    let (session, mut peer) = within(async {
        tokio::join!(
            Session::start(
                server.addr.to_string(),
                Credentials::Stored,
                Arc::clone(&storage) as Arc<dyn Storage>,
                SessionOptions::new("tern-client-tests/0"),
            ),
            async {
                let mut peer = server.accept().await;
                peer.handshake().await;
                let resume = peer.expect_frame().await;
                assert!(matches!(resume.body, Body::Resume(_)), "{resume:?}");
                let auth = Authenticated {
                    user_id: 42,
                    device_id: 1,
                    username: "ada".into(),
                    token: None,
                };
                peer.send(resume.request_id, auth).await;
                peer
            }
        )
    })
    .await;
    let session = session.expect("the session starts");

    let sync = within(peer.expect_frame()).await;
    assert!(
        matches!(&sync.body, Body::Sync(s) if s.since == 0),
        "{sync:?}"
    );
    let page = SyncPage {
        updates: vec![receipt(1), skipped(2), receipt(3), skipped(4)],
        has_more: false,
        head: 4,
    };
    peer.send(sync.request_id, page).await;

    let mut seen = Vec::new();
    loop {
        match within(session.next_event()).await {
            Some(SessionEvent::Update(update)) => seen.push(update),
            Some(SessionEvent::Connected { resumed: true }) => break,
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seen, vec![receipt(1), receipt(3)]);

    // The last update is a live Skipped: the app, waiting for its next event, gets nothing, and
    // the session stores and acknowledges the cursor past it.
    peer.send(0, UpdateEvent { update: skipped(5) }).await;
    within(async {
        tokio::select! {
            event = session.next_event() => panic!("nothing to show, got {event:?}"),
            () = async {
                loop {
                    match peer.expect_frame().await.body {
                        Body::Ack(Ack { up_to: 5 }) => break,
                        Body::Ack(Ack { up_to }) => assert!(up_to < 5, "acknowledged {up_to}"),
                        other => panic!("expected Ack, got {other:?}"),
                    }
                }
            } => {}
        }
    })
    .await;
    assert_eq!(session.cursor(), 5);
    assert_eq!(storage.load().expect("load").cursor, 5);

    within(async {
        tokio::join!(session.close(), async move {
            while peer.recv().await.is_some() {}
            drop(peer);
        })
    })
    .await;
}
