// A group's details beside (or, on a phone, over) its messages: its members with their roles and
// presence, and what the user may do (spec §11.8): rename, add and remove members, leave.

import { useState } from "preact/hooks";
import { describeError } from "../account";
import { lastSeen } from "../format";
import type { ChatConversation, ChatMember, Role } from "../model";
import { Avatar, Spinner, useNow, useStore } from "./bits";
import { PeoplePicker } from "./dialogs";
import { CloseIcon } from "./icons";

const ROLE_RANK: Record<Role, number> = { member: 1, admin: 2, owner: 3 };
const ROLE_LABEL: Record<Role, string> = { member: "", admin: "Admin", owner: "Owner" };

export function GroupInfo(props: { conversation: ChatConversation; onClose: () => void }) {
  const store = useStore();
  const now = useNow();
  const c = props.conversation;
  const members = c.members ?? [];
  const myRole = members.find((m) => m.userId === store.me)?.role ?? "member";
  const [adding, setAdding] = useState<{ userId: bigint; username: string }[]>([]);
  const [name, setName] = useState(c.name);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");

  const run = async (f: () => Promise<void>) => {
    setBusy(true);
    setError("");
    try {
      await f();
    } catch (e) {
      setError(describeError(e));
    }
    setBusy(false);
  };

  const canRemove = (m: ChatMember) =>
    m.userId !== store.me && ROLE_RANK[myRole] >= 2 && ROLE_RANK[myRole] > ROLE_RANK[m.role];
  const sorted = [...members].sort(
    (a, b) => ROLE_RANK[b.role] - ROLE_RANK[a.role] || store.nameOf(a.userId).localeCompare(store.nameOf(b.userId)),
  );

  return (
    <aside class="info" aria-label="Group info" data-testid="group-info">
      <header class="info-head">
        <h3>Group info</h3>
        <button class="icon-button" aria-label="Close group info" onClick={props.onClose}>
          <CloseIcon />
        </button>
      </header>
      <div class="info-body">
        <div class="info-hero">
          <Avatar name={c.name} size={72} group />
          <form
            class="rename"
            onSubmit={(e) => {
              e.preventDefault();
              if (name.trim() && name.trim() !== c.name) void run(() => store.renameGroup(c.id, name));
            }}
          >
            <input
              value={name}
              maxLength={128}
              onInput={(e) => setName(e.currentTarget.value)}
              aria-label="Group name"
              data-testid="group-rename-input"
            />
            {name.trim() !== c.name && name.trim() ? (
              <button class="primary small" type="submit" disabled={busy} data-testid="group-rename">
                Rename
              </button>
            ) : null}
          </form>
          <p class="muted small">{members.length} members</p>
        </div>
        <h4>Members</h4>
        <ul class="members" data-testid="members">
          {sorted.map((m) => {
            const p = store.presence.get(m.userId);
            const who = m.userId === store.me ? `${store.username} (you)` : store.nameOf(m.userId);
            const status =
              m.userId === store.me
                ? "online"
                : p?.online
                  ? "online"
                  : p?.lastSeenMs != null
                    ? lastSeen(p.lastSeenMs, now)
                    : "";
            return (
              <li class="member" key={m.userId.toString()} data-testid="member" data-name={store.nameOf(m.userId)}>
                <Avatar name={store.nameOf(m.userId)} size={36} online={m.userId !== store.me && p?.online} />
                <span class="member-text">
                  <span class="member-name">{who || "…"}</span>
                  <span class={status === "online" ? "member-status online" : "member-status"}>{status}</span>
                </span>
                {ROLE_LABEL[m.role] ? <span class="role">{ROLE_LABEL[m.role]}</span> : null}
                {canRemove(m) ? (
                  <button
                    class="link danger"
                    disabled={busy}
                    onClick={() => void run(() => store.removeMember(c.id, m.userId))}
                    data-testid="member-remove"
                  >
                    Remove
                  </button>
                ) : null}
              </li>
            );
          })}
        </ul>
        {ROLE_RANK[myRole] >= 2 ? (
          <div class="info-section">
            <h4>Add members</h4>
            <PeoplePicker picked={adding} onChange={setAdding} exclude={members.map((m) => m.userId)} max={50} />
            {adding.length > 0 ? (
              <button
                class="primary"
                disabled={busy}
                data-testid="members-add"
                onClick={() =>
                  void run(async () => {
                    await store.addMembers(
                      c.id,
                      adding.map((a) => a.userId),
                    );
                    setAdding([]);
                  })
                }
              >
                {busy ? <Spinner /> : null}
                Add {adding.length === 1 ? adding[0].username : `${adding.length} people`}
              </button>
            ) : null}
          </div>
        ) : null}
        {error ? (
          <p class="form-error" role="alert">
            {error}
          </p>
        ) : null}
        <button
          class="danger-button"
          disabled={busy}
          onClick={() => {
            if (confirm(`Leave “${c.name}”?`)) void run(() => store.leaveGroup(c.id));
          }}
          data-testid="leave-group"
        >
          Leave group
        </button>
      </div>
    </aside>
  );
}
