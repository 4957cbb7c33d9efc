//! The null server: the Tern framing with no storage and no logic beyond routing. It answers
//! `Hello`, authenticates anyone with made-up ids, answers `Send` with `Sent` and routes the message
//! as an `UpdateEvent` to every connection of every member (the sender's included, as `ternd` does),
//! and answers `Ping`, `Sync` (an empty page that turns the connection live), `OpenDirect` and
//! `CreateGroup`. It is the fastest any server speaking this protocol could be on the same machine,
//! the reference `tern-bench` reports `ternd`'s rates against.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::BytesMut;
use tern_protocol::frames::{
    Authenticated, Conversation, Error, Pong, Sent, SyncPage, UpdateEvent, Welcome,
};
use tern_protocol::limits::*;
use tern_protocol::types::{
    ConversationInfo, ConversationKind, Member, Message, Role, ServerLimits,
};
use tern_protocol::{Body, ErrorCode, Frame, FrameDecoder, Update, UpdateKind};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::conn::{writer, Outbox};

#[derive(Debug, Default)]
struct User {
    name: String,
    seq: AtomicU64,
    conns: Mutex<Vec<Arc<Live>>>,
}

#[derive(Debug)]
struct Live {
    out: Arc<Outbox>,
    live: AtomicBool,
}

#[derive(Debug, Default)]
struct Conv {
    members: Vec<u64>,
    seq: AtomicU64,
    kind: ConversationKind,
}

#[derive(Debug, Default)]
struct State {
    users: RwLock<HashMap<u64, Arc<User>>>,
    names: Mutex<HashMap<String, u64>>,
    convs: RwLock<HashMap<u64, Arc<Conv>>>,
    direct: Mutex<HashMap<(u64, u64), u64>>,
    next_id: AtomicU64,
}

impl State {
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn user_by_name(&self, name: &str) -> (u64, Arc<User>) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let id = *names.entry(name.to_owned()).or_insert_with(|| self.id());
        drop(names);
        let user = self.user(id, name);
        (id, user)
    }

    fn user(&self, id: u64, name: &str) -> Arc<User> {
        if let Some(u) = self
            .users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return u.clone();
        }
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        users
            .entry(id)
            .or_insert_with(|| {
                Arc::new(User {
                    name: name.to_owned(),
                    ..User::default()
                })
            })
            .clone()
    }

    fn find_user(&self, id: u64) -> Option<Arc<User>> {
        self.users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    fn conv(&self, id: u64) -> Option<Arc<Conv>> {
        self.convs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    fn add_conv(&self, conv: Conv) -> (u64, Arc<Conv>) {
        let id = self.id();
        let conv = Arc::new(conv);
        self.convs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, conv.clone());
        (id, conv)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn token_of(user_id: u64) -> [u8; 32] {
    let mut t = [0u8; 32];
    t[..8].copy_from_slice(&user_id.to_be_bytes());
    t
}

fn error(code: ErrorCode, message: &str) -> Error {
    Error {
        code,
        retry_after_ms: 0,
        message: message.into(),
    }
}

fn info(id: u64, conv: &Conv) -> ConversationInfo {
    ConversationInfo {
        conversation_id: id,
        kind: conv.kind,
        name: String::new(),
        created_at: now_ms(),
        last_seq: conv.seq.load(Ordering::Relaxed),
        read_seq: 0,
        unread: 0,
        members: conv
            .members
            .iter()
            .map(|&user_id| Member {
                user_id,
                role: Role::Member,
            })
            .collect(),
    }
}

/// Serves until the process is killed.
pub(crate) async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening tcp={}", listener.local_addr()?);
    let state = Arc::new(State::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(state.clone(), stream));
    }
}

async fn connection(state: Arc<State>, stream: TcpStream) {
    let (mut r, w) = stream.into_split();
    let out = Outbox::new(1);
    tokio::spawn(writer(out.clone(), crate::transport::WriteHalf::Tcp(w)));
    let me = Arc::new(Live {
        out: out.clone(),
        live: AtomicBool::new(false),
    });
    let mut user: Option<(u64, Arc<User>)> = None;
    let decoder = FrameDecoder::new();
    let mut rbuf = BytesMut::with_capacity(4096);
    'read: loop {
        if rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(16 * 1024);
        }
        match r.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            let frame = match decoder.decode(&mut rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'read,
            };
            handle(&state, &me, &mut user, frame);
        }
    }
    if let Some((_, u)) = user {
        u.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| !Arc::ptr_eq(c, &me));
    }
    out.close();
}

fn authenticate(
    user: &mut Option<(u64, Arc<User>)>,
    me: &Arc<Live>,
    id: u64,
    u: Arc<User>,
    token: bool,
) -> Body {
    u.conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(me.clone());
    let reply = Authenticated {
        user_id: id,
        device_id: 1,
        username: u.name.clone(),
        token: token.then(|| token_of(id)),
    };
    *user = Some((id, u));
    reply.into()
}

fn handle(state: &State, me: &Arc<Live>, user: &mut Option<(u64, Arc<User>)>, frame: Frame) {
    let id = frame.request_id;
    let reply: Option<Body> = match frame.body {
        Body::Hello(_) => Some(
            Welcome {
                version: PROTOCOL_VERSION,
                server_name: "tern-bench null-server".into(),
                server_time_ms: now_ms(),
                limits: ServerLimits {
                    frame_bytes_max: FRAME_BYTES_MAX,
                    body_chars_max: BODY_CHARS_MAX,
                    group_members_max: GROUP_MEMBERS_MAX,
                    devices_per_user_max: DEVICES_PER_USER_MAX,
                    sync_page_updates_max: SYNC_PAGE_UPDATES_MAX,
                    history_page_messages_max: HISTORY_PAGE_MESSAGES_MAX,
                    media_chunk_bytes_max: MEDIA_CHUNK_BYTES_MAX,
                    media_bytes_max: 0,
                    heartbeat_interval_ms: 15_000,
                    idle_timeout_ms: 45_000,
                },
            }
            .into(),
        ),
        Body::Ping(p) => Some(Pong { nonce: p.nonce }.into()),
        Body::Register(r) => {
            let (uid, u) = state.user_by_name(&r.username);
            Some(authenticate(user, me, uid, u, true))
        }
        Body::Login(l) => {
            let (uid, u) = state.user_by_name(&l.username);
            Some(authenticate(user, me, uid, u, true))
        }
        Body::Resume(r) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&r.token[..8]);
            let uid = u64::from_be_bytes(b);
            match state.find_user(uid) {
                Some(u) => Some(authenticate(user, me, uid, u, false)),
                None => Some(error(ErrorCode::BAD_CREDENTIALS, "unknown token").into()),
            }
        }
        _ if user.is_none() => {
            Some(error(ErrorCode::NOT_AUTHENTICATED, "not authenticated").into())
        }
        Body::Sync(_) => {
            me.live.store(true, Ordering::Relaxed);
            let head = user
                .as_ref()
                .map_or(0, |(_, u)| u.seq.load(Ordering::Relaxed));
            Some(
                SyncPage {
                    updates: Vec::new(),
                    has_more: false,
                    head,
                }
                .into(),
            )
        }
        Body::Ack(_) => None,
        Body::OpenDirect(o) => {
            let me_id = user.as_ref().map_or(0, |(i, _)| *i);
            let key = (me_id.min(o.user_id), me_id.max(o.user_id));
            let mut direct = state.direct.lock().unwrap_or_else(|e| e.into_inner());
            let cid = match direct.get(&key) {
                Some(&c) => c,
                None => {
                    let (c, _) = state.add_conv(Conv {
                        members: vec![key.0, key.1],
                        seq: AtomicU64::new(0),
                        kind: ConversationKind::Direct,
                    });
                    direct.insert(key, c);
                    c
                }
            };
            drop(direct);
            state.conv(cid).map(|c| {
                Conversation {
                    conversation: info(cid, &c),
                    encrypted: false,
                }
                .into()
            })
        }
        Body::CreateGroup(g) => {
            let me_id = user.as_ref().map_or(0, |(i, _)| *i);
            let mut members = vec![me_id];
            members.extend(g.members.iter().copied().filter(|&m| m != me_id));
            let (cid, c) = state.add_conv(Conv {
                members,
                seq: AtomicU64::new(0),
                kind: ConversationKind::Group,
            });
            Some(
                Conversation {
                    conversation: info(cid, &c),
                    encrypted: false,
                }
                .into(),
            )
        }
        Body::Send(s) => {
            let sender = user.as_ref().map_or(0, |(i, _)| *i);
            match state.conv(s.conversation_id) {
                Some(conv) if conv.members.contains(&sender) => {
                    let seq = conv.seq.fetch_add(1, Ordering::Relaxed) + 1;
                    let ts = now_ms();
                    let message_id = state.id();
                    me.out.push(&Frame::new(
                        id,
                        Sent {
                            conversation_id: s.conversation_id,
                            client_msg_id: s.client_msg_id,
                            seq,
                            message_id,
                            ts,
                        },
                    ));
                    let message = Message {
                        conversation_id: s.conversation_id,
                        seq,
                        message_id,
                        sender,
                        sender_device: 1,
                        ts,
                        client_msg_id: s.client_msg_id,
                        body: s.body,
                        attachments: Vec::new(),
                    };
                    // Encoded once; each recipient's copy gets its own `user_seq`, the first
                    // field after the frame header.
                    let mut template = BytesMut::new();
                    let _ = Frame::event(UpdateEvent {
                        update: Update {
                            user_seq: 0,
                            kind: UpdateKind::Message(message),
                        },
                    })
                    .encode(&mut template);
                    let at = FRAME_HEADER_BYTES as usize;
                    for &member in &conv.members {
                        let Some(u) = state.find_user(member) else {
                            continue;
                        };
                        let user_seq = u.seq.fetch_add(1, Ordering::Relaxed) + 1;
                        template[at..at + 8].copy_from_slice(&user_seq.to_be_bytes());
                        let conns = u.conns.lock().unwrap_or_else(|e| e.into_inner());
                        for c in conns.iter().filter(|c| c.live.load(Ordering::Relaxed)) {
                            c.out.push_bytes(&template);
                        }
                    }
                    None
                }
                _ => Some(error(ErrorCode::NOT_FOUND, "no such conversation").into()),
            }
        }
        _ => Some(error(ErrorCode::UNKNOWN_TYPE, "not in the null server").into()),
    };
    if let Some(body) = reply {
        me.out.push(&Frame::new(id, body));
    }
}
