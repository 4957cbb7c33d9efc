//! Groups: creation, membership, roles and names, and the updates that tell members about them.
//!
//! A group is created by its creator's core, which writes the record and the members'
//! conversation lists in one batch. Every later change is carried out by the group's owner core,
//! the one writer of its record, which also keeps the record cached for the membership check of
//! every `Send`. Each change is appended to the logs of the members (and of a removed member), so
//! every device learns it through `Sync` like any other update. The rules are the spec's §11.8:
//! members send, read, rename and leave; admins also add members and remove members; the owner
//! also removes admins and changes roles.

use super::HashSet;

use tern_protocol::frames::{Conversation, CreateGroup, Ok as OkFrame};
use tern_protocol::types::{ConversationInfo, ConversationKind, Member, Role};
use tern_protocol::update::{GroupCreated, GroupRenamed, MemberRemoved, MembersAdded, RoleChanged};
use tern_protocol::{Body, ErrorCode, UpdateKind};

use super::mail::{ConnRef, GroupChange, Mail};
use super::{ConnId, Shard};
use crate::store::records::{ConversationRecord, MemberRecord, UpdateRecord};
use crate::store::StoreError;

fn role_of(record: &ConversationRecord, user_id: u64) -> Option<Role> {
    record
        .members
        .iter()
        .find(|m| m.user_id == user_id)
        .map(|m| Role::from_u8(m.role).unwrap_or_default())
}

fn wire_members(members: &[MemberRecord]) -> Vec<Member> {
    members
        .iter()
        .map(|m| Member {
            user_id: m.user_id,
            role: Role::from_u8(m.role).unwrap_or_default(),
        })
        .collect()
}

/// The wire form of a stored group update.
pub(crate) fn wire_group_update(record: &UpdateRecord) -> UpdateKind {
    match record.clone() {
        UpdateRecord::GroupCreated {
            conversation_id,
            actor,
            ts,
            name,
            members,
        } => UpdateKind::GroupCreated(GroupCreated {
            conversation_id,
            actor,
            ts,
            name,
            members: wire_members(&members),
            // Filled in from the store by the caller (`Shard::complete_update`).
            encrypted: false,
        }),
        UpdateRecord::MembersAdded {
            conversation_id,
            actor,
            ts,
            members,
        } => UpdateKind::MembersAdded(MembersAdded {
            conversation_id,
            actor,
            ts,
            members,
        }),
        UpdateRecord::MemberRemoved {
            conversation_id,
            actor,
            ts,
            user_id,
        } => UpdateKind::MemberRemoved(MemberRemoved {
            conversation_id,
            actor,
            ts,
            user_id,
        }),
        UpdateRecord::GroupRenamed {
            conversation_id,
            actor,
            ts,
            name,
        } => UpdateKind::GroupRenamed(GroupRenamed {
            conversation_id,
            actor,
            ts,
            name,
        }),
        UpdateRecord::RoleChanged {
            conversation_id,
            actor,
            ts,
            user_id,
            role,
        } => {
            let role = Role::from_u8(role).unwrap_or_default();
            UpdateKind::RoleChanged(RoleChanged {
                conversation_id,
                actor,
                ts,
                user_id,
                role,
            })
        }
        UpdateRecord::Message { .. }
        | UpdateRecord::Receipt { .. }
        | UpdateRecord::DeviceListChanged { .. }
        | UpdateRecord::Skipped => {
            unreachable!(
                "messages, receipts, device list changes and skips are materialised by chat.rs"
            )
        }
    }
}

impl Shard {
    /// On the creator's core: creates the group and tells every member.
    pub(crate) fn handle_create_group(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        create: CreateGroup,
    ) -> Result<(), StoreError> {
        if create.name.is_empty() {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::INVALID_ARGUMENT,
                "a group needs a name",
            );
            return Ok(());
        }
        let mut seen: HashSet<u64> = [user_id].into_iter().collect();
        let others: Vec<u64> = create
            .members
            .into_iter()
            .filter(|m| seen.insert(*m))
            .collect();
        if 1 + others.len() > self.config.group_members_max as usize {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::GROUP_FULL,
                "too many members for one group",
            );
            return Ok(());
        }
        for &member in &others {
            if self.store.user(member)?.is_none() {
                self.reply_error(
                    conn,
                    request_id,
                    ErrorCode::NOT_FOUND,
                    format!("no user {member}"),
                );
                return Ok(());
            }
        }
        let conversation_id = self.next_id(now_ms);
        let mut members = vec![MemberRecord {
            user_id,
            role: Role::Owner as u8,
        }];
        members.extend(others.iter().map(|&m| MemberRecord {
            user_id: m,
            role: Role::Member as u8,
        }));
        let record = ConversationRecord {
            kind: ConversationKind::Group as u8,
            name: create.name,
            created_at: now_ms,
            members,
        };
        self.batch.put_conversation(conversation_id, &record)?;
        if create.encrypted {
            self.batch.put_conversation_encrypted(conversation_id);
        }
        for member in &record.members {
            self.batch
                .put_user_conversation(member.user_id, conversation_id);
        }
        let update = UpdateRecord::GroupCreated {
            conversation_id,
            actor: user_id,
            ts: now_ms,
            name: record.name.clone(),
            members: record.members.clone(),
        };
        self.tell_members(record.members.iter().map(|m| m.user_id), &update);
        let conversation = ConversationInfo {
            conversation_id,
            kind: ConversationKind::Group,
            name: record.name.clone(),
            created_at: now_ms,
            last_seq: 0,
            read_seq: 0,
            unread: 0,
            members: wire_members(&record.members),
        };
        let encrypted = create.encrypted;
        self.reply_after_commit(
            conn,
            request_id,
            Conversation {
                conversation,
                encrypted,
            },
        );
        Ok(())
    }

    /// Appends `update` to each user's log once this core's batch is durable.
    fn tell_members(&mut self, users: impl IntoIterator<Item = u64>, update: &UpdateRecord) {
        for to_user in users {
            let mail = Mail::Append {
                to_user,
                update: update.clone(),
            };
            self.mail_after_commit(self.owner(to_user), mail);
        }
    }

    /// On the caller's core: sends a group change to the group's owner core.
    pub(crate) fn forward_group_change(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        conversation_id: u64,
        change: GroupChange,
    ) -> Result<(), StoreError> {
        if let GroupChange::Rename(name) = &change {
            if name.is_empty() {
                self.reply_error(
                    conn,
                    request_id,
                    ErrorCode::INVALID_ARGUMENT,
                    "a group needs a name",
                );
                return Ok(());
            }
        }
        let origin = ConnRef {
            core: self.core,
            conn,
        };
        let core = self.owner(conversation_id);
        self.mail_now(
            core,
            Mail::GroupChange {
                origin,
                request_id,
                user_id,
                conversation_id,
                change,
            },
        );
        Ok(())
    }

    /// On the group's owner core: checks and applies a change.
    pub(crate) fn apply_group_change(
        &mut self,
        now_ms: u64,
        origin: ConnRef,
        request_id: u32,
        user_id: u64,
        conversation_id: u64,
        change: GroupChange,
    ) -> Result<(), StoreError> {
        let outcome = self.plan_group_change(now_ms, user_id, conversation_id, change)?;
        let (record, updates, removed) = match outcome {
            Ok(plan) => plan,
            Err(code) => {
                self.mail_now(
                    origin.core,
                    Mail::Reply {
                        origin,
                        request_id,
                        result: Err(code),
                    },
                );
                return Ok(());
            }
        };
        if !updates.is_empty() {
            let before: HashSet<u64> = self.group_members(conversation_id);
            let changed =
                removed.is_some() || record.members.iter().any(|m| !before.contains(&m.user_id));
            if changed {
                self.fix_recipients(conversation_id)?;
            }
            self.batch.put_conversation(conversation_id, &record)?;
            for member in &record.members {
                if !before.contains(&member.user_id) {
                    self.batch
                        .put_user_conversation(member.user_id, conversation_id);
                }
            }
            if let Some(removed) = removed {
                self.batch
                    .delete_user_conversation(removed, conversation_id);
            }
            let audience: Vec<u64> = record
                .members
                .iter()
                .map(|m| m.user_id)
                .chain(removed)
                .collect();
            for update in &updates {
                self.tell_members(audience.iter().copied(), update);
            }
            self.set_cached_conversation(conversation_id, record);
        }
        let result = Ok(Box::new(Body::Ok(OkFrame {})));
        self.mail_after_commit(
            origin.core,
            Mail::Reply {
                origin,
                request_id,
                result,
            },
        );
        Ok(())
    }

    fn group_members(&mut self, conversation_id: u64) -> HashSet<u64> {
        match self.cached_conversation(conversation_id) {
            Ok(Some(record)) => record.members.iter().map(|m| m.user_id).collect(),
            _ => HashSet::default(),
        }
    }

    /// The group after the change, the updates it appends and the user it removes; or the error.
    #[allow(clippy::type_complexity)]
    fn plan_group_change(
        &mut self,
        now_ms: u64,
        user_id: u64,
        conversation_id: u64,
        change: GroupChange,
    ) -> Result<Result<(ConversationRecord, Vec<UpdateRecord>, Option<u64>), ErrorCode>, StoreError>
    {
        let Some(current) = self.cached_conversation(conversation_id)? else {
            return Ok(Err(ErrorCode::NOT_FOUND));
        };
        let Some(caller_role) = role_of(&current, user_id) else {
            return Ok(Err(ErrorCode::NOT_FOUND));
        };
        if current.kind != ConversationKind::Group as u8 {
            return Ok(Err(ErrorCode::INVALID_ARGUMENT));
        }
        let mut record = (*current).clone();
        let (actor, ts) = (user_id, now_ms);
        let mut updates = Vec::new();
        let mut removed = None;
        match change {
            GroupChange::Add(users) => {
                if caller_role == Role::Member {
                    return Ok(Err(ErrorCode::FORBIDDEN));
                }
                let mut seen: HashSet<u64> = record.members.iter().map(|m| m.user_id).collect();
                let new: Vec<u64> = users.into_iter().filter(|u| seen.insert(*u)).collect();
                for &u in &new {
                    if self.store.user(u)?.is_none() {
                        return Ok(Err(ErrorCode::NOT_FOUND));
                    }
                }
                if record.members.len() + new.len() > self.config.group_members_max as usize {
                    return Ok(Err(ErrorCode::GROUP_FULL));
                }
                if !new.is_empty() {
                    record.members.extend(new.iter().map(|&u| MemberRecord {
                        user_id: u,
                        role: Role::Member as u8,
                    }));
                    updates.push(UpdateRecord::MembersAdded {
                        conversation_id,
                        actor,
                        ts,
                        members: new,
                    });
                }
            }
            GroupChange::Remove(target) => {
                if target == user_id {
                    return Ok(Err(ErrorCode::INVALID_ARGUMENT));
                }
                let Some(target_role) = role_of(&record, target) else {
                    return Ok(Err(ErrorCode::NOT_FOUND));
                };
                let allowed = match target_role {
                    Role::Member => caller_role != Role::Member,
                    Role::Admin => caller_role == Role::Owner,
                    Role::Owner => false,
                };
                if !allowed {
                    return Ok(Err(ErrorCode::FORBIDDEN));
                }
                record.members.retain(|m| m.user_id != target);
                updates.push(UpdateRecord::MemberRemoved {
                    conversation_id,
                    actor,
                    ts,
                    user_id: target,
                });
                removed = Some(target);
            }
            GroupChange::Leave => {
                if caller_role == Role::Owner {
                    // Ownership passes to the longest-standing admin, else member (members are
                    // kept in the order they joined).
                    let heir = record
                        .members
                        .iter()
                        .find(|m| m.user_id != user_id && m.role == Role::Admin as u8)
                        .or_else(|| record.members.iter().find(|m| m.user_id != user_id))
                        .map(|m| m.user_id);
                    if let Some(heir) = heir {
                        set_role(&mut record, heir, Role::Owner);
                        let role = Role::Owner as u8;
                        updates.push(UpdateRecord::RoleChanged {
                            conversation_id,
                            actor,
                            ts,
                            user_id: heir,
                            role,
                        });
                    }
                }
                record.members.retain(|m| m.user_id != user_id);
                updates.push(UpdateRecord::MemberRemoved {
                    conversation_id,
                    actor,
                    ts,
                    user_id,
                });
                removed = Some(user_id);
            }
            GroupChange::Rename(name) => {
                record.name = name.clone();
                updates.push(UpdateRecord::GroupRenamed {
                    conversation_id,
                    actor,
                    ts,
                    name,
                });
            }
            GroupChange::SetRole(target, role) => {
                if caller_role != Role::Owner {
                    return Ok(Err(ErrorCode::FORBIDDEN));
                }
                if target == user_id {
                    return Ok(Err(ErrorCode::INVALID_ARGUMENT));
                }
                let Some(target_role) = role_of(&record, target) else {
                    return Ok(Err(ErrorCode::NOT_FOUND));
                };
                if target_role != role {
                    set_role(&mut record, target, role);
                    updates.push(UpdateRecord::RoleChanged {
                        conversation_id,
                        actor,
                        ts,
                        user_id: target,
                        role: role as u8,
                    });
                    if role == Role::Owner {
                        set_role(&mut record, user_id, Role::Admin);
                        let role = Role::Admin as u8;
                        updates.push(UpdateRecord::RoleChanged {
                            conversation_id,
                            actor,
                            ts,
                            user_id,
                            role,
                        });
                    }
                }
            }
        }
        Ok(Ok((record, updates, removed)))
    }
}

fn set_role(record: &mut ConversationRecord, user_id: u64, role: Role) {
    if let Some(member) = record.members.iter_mut().find(|m| m.user_id == user_id) {
        member.role = role as u8;
    }
}
