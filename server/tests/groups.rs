//! Integration tests of groups against a real `ternd` on both I/O engines: a 100-member group with
//! a few live devices and the rest syncing later, membership checks, the role rules of the spec's
//! §11.8, and "read by k of n" receipts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::*;
use tern_client::{Client, ClientError, Event};
use tern_protocol::frames::{
    AddMembers, CreateGroup, LeaveGroup, RemoveMember, RenameGroup, SetRole,
};
use tern_protocol::types::{ConversationInfo, ReceiptKind, Role};
use tern_protocol::{Body, ErrorCode, UpdateKind};

on_both_engines!(
    hundred_member_group,
    non_member_is_refused,
    roles_and_membership_changes,
    read_by_k_of_n
);

async fn create_group(client: &Client, name: &str, members: Vec<u64>) -> ConversationInfo {
    match client
        .request(CreateGroup {
            name: name.into(),
            members,
            encrypted: false,
        })
        .await
        .expect("create group")
    {
        Body::Conversation(c) => c.conversation,
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn ok(client: &Client, body: impl Into<Body>) -> Result<(), ErrorCode> {
    match client.request(body).await {
        Ok(Body::Ok(_)) => Ok(()),
        Err(ClientError::Server { code, .. }) => Err(code),
        other => panic!("unexpected reply {other:?}"),
    }
}

// Proves a message to a group of 100 reaches the 5 live devices at once and every one of the 95
// offline members when they sync, along with the GroupCreated update, and is in history.
async fn hundred_member_group(engine: &'static str) {
    let server = Ternd::start(engine);
    let mut live = Vec::new();
    let mut offline = Vec::new();
    let mut ids = Vec::new();
    for i in 0..100 {
        let (client, auth) = server.register(&format!("member{i}")).await;
        ids.push(auth.user_id);
        if i < 5 {
            live.push(client);
        } else {
            offline.push(auth.token.unwrap());
            client.close().await;
        }
    }
    let group = create_group(&live[0], "hundred", ids[1..].to_vec()).await;
    assert_eq!(group.members.len(), 100);
    assert_eq!(group.members[0].role, Role::Owner);
    for client in &live {
        sync_all(client, 0).await;
    }
    let sent = live[1]
        .send(group.conversation_id, cmid(1, 1), "hello, all")
        .await
        .unwrap();
    for client in &live {
        let message = next_message(client).await;
        assert_eq!(
            (message.seq, message.body.as_str()),
            (sent.seq, "hello, all")
        );
    }
    for token in offline {
        let client = server.client().await;
        client.resume(token).await.unwrap();
        let updates = sync_all(&client, 0).await;
        assert!(matches!(&updates[0].kind, UpdateKind::GroupCreated(g) if g.members.len() == 100));
        assert_eq!(bodies(&updates), ["hello, all"]);
        let history = client.history(group.conversation_id, 0, 0).await.unwrap();
        assert_eq!(history.messages.len(), 1);
        client.close().await;
    }
}

// Proves someone outside a group can neither send to it, read it, nor change it.
async fn non_member_is_refused(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (_bob, bob) = server.register("bob").await;
    let (mallory, _) = server.register("mallory").await;
    let group = create_group(&alice, "friends", vec![bob.user_id]).await;
    let code =
        |r: Result<tern_protocol::frames::Sent, ClientError>| r.err().and_then(|e| e.server_code());
    assert_eq!(
        code(mallory.send(group.conversation_id, cmid(1, 1), "hi").await),
        Some(ErrorCode::NOT_FOUND)
    );
    assert!(mallory.history(group.conversation_id, 0, 0).await.is_err());
    let rename = RenameGroup {
        conversation_id: group.conversation_id,
        name: "mine".into(),
    };
    assert_eq!(ok(&mallory, rename).await, Err(ErrorCode::NOT_FOUND));
    let too_many = (0..100).map(|i| 10_000 + i).collect();
    let full = alice
        .request(CreateGroup {
            name: "big".into(),
            members: too_many,
            encrypted: false,
        })
        .await;
    assert_eq!(
        full.err().and_then(|e| e.server_code()),
        Some(ErrorCode::GROUP_FULL)
    );
}

// Proves the role rules: members may not add, admins may add and remove members, only the owner
// changes roles, a removed member is told and can no longer send, renames reach everyone, and an
// owner who leaves hands ownership on.
async fn roles_and_membership_changes(engine: &'static str) {
    let server = Ternd::start(engine);
    let (owner, _) = server.register("owner").await;
    let (admin, admin_auth) = server.register("admin").await;
    let (member, member_auth) = server.register("member").await;
    let (_newbie, newbie) = server.register("newbie").await;
    let group = create_group(
        &owner,
        "club",
        vec![admin_auth.user_id, member_auth.user_id],
    )
    .await;
    let id = group.conversation_id;
    for client in [&owner, &admin, &member] {
        sync_all(client, 0).await;
    }

    let add = || AddMembers {
        conversation_id: id,
        members: vec![newbie.user_id],
    };
    assert_eq!(ok(&member, add()).await, Err(ErrorCode::FORBIDDEN));
    let promote = SetRole {
        conversation_id: id,
        user_id: admin_auth.user_id,
        role: Role::Admin,
    };
    assert_eq!(ok(&admin, promote.clone()).await, Err(ErrorCode::FORBIDDEN));
    ok(&owner, promote).await.unwrap();
    ok(&admin, add()).await.unwrap();
    let info = owner.get_conversation(id).await.unwrap();
    assert_eq!(info.members.len(), 4);

    let remove = RemoveMember {
        conversation_id: id,
        user_id: member_auth.user_id,
    };
    ok(&admin, remove).await.unwrap();
    let removed = member
        .wait_for_event(
            |e| matches!(e, Event::Update(u) if matches!(&u.kind, UpdateKind::MemberRemoved(r) if r.user_id == member_auth.user_id)),
            EVENT_WAIT,
        )
        .await;
    assert!(removed.is_ok(), "the removed member is told: {removed:?}");
    let refused = member.send(id, cmid(3, 1), "still here?").await;
    assert_eq!(
        refused.err().and_then(|e| e.server_code()),
        Some(ErrorCode::NOT_FOUND)
    );

    ok(
        &admin,
        RenameGroup {
            conversation_id: id,
            name: "society".into(),
        },
    )
    .await
    .unwrap();
    let renamed = owner
        .wait_for_event(
            |e| matches!(e, Event::Update(u) if matches!(&u.kind, UpdateKind::GroupRenamed(r) if r.name == "society")),
            EVENT_WAIT,
        )
        .await;
    assert!(
        renamed.is_ok(),
        "every member hears of the rename: {renamed:?}"
    );

    ok(
        &owner,
        LeaveGroup {
            conversation_id: id,
        },
    )
    .await
    .unwrap();
    let info = admin.get_conversation(id).await.unwrap();
    let roles: Vec<(u64, Role)> = info.members.iter().map(|m| (m.user_id, m.role)).collect();
    assert_eq!(
        roles,
        [
            (admin_auth.user_id, Role::Owner),
            (newbie.user_id, Role::Member)
        ]
    );
    assert_eq!(info.name, "society");
}

// Proves each member's read watermark reaches the sender, so it can show "read by k of n".
async fn read_by_k_of_n(engine: &'static str) {
    let server = Ternd::start(engine);
    let (alice, _) = server.register("alice").await;
    let (bob, bob_auth) = server.register("bob").await;
    let (carol, carol_auth) = server.register("carol").await;
    let group = create_group(&alice, "trio", vec![bob_auth.user_id, carol_auth.user_id]).await;
    sync_all(&alice, 0).await;
    let sent = alice
        .send(group.conversation_id, cmid(1, 1), "read me")
        .await
        .unwrap();
    bob.mark_read(group.conversation_id, sent.seq)
        .await
        .unwrap();
    carol
        .mark_read(group.conversation_id, sent.seq)
        .await
        .unwrap();
    let mut readers = Vec::new();
    while readers.len() < 2 {
        let event = alice
            .wait_for_event(
                |e| matches!(e, Event::Update(u) if matches!(&u.kind, UpdateKind::Receipt(r) if r.kind == ReceiptKind::Read)),
                EVENT_WAIT,
            )
            .await
            .unwrap();
        if let Event::Update(u) = event {
            if let UpdateKind::Receipt(r) = u.kind {
                assert_eq!(r.up_to_seq, sent.seq);
                readers.push(r.user_id);
            }
        }
    }
    readers.sort_unstable();
    let mut expected = vec![bob_auth.user_id, carol_auth.user_id];
    expected.sort_unstable();
    assert_eq!(readers, expected, "read by 2 of 2");
}
