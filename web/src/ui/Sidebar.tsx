// The left pane: who is signed in, the connection's state, and the conversation list with each
// conversation's last message, unread count and typing indicator.

import type { Attachment } from "@tern/client";
import type { ChatConversation } from "../model";
import type { Tick } from "../receipts";
import { listTime, nameList } from "../format";
import type { ChatStore } from "../store";
import type { Dialog } from "./ChatScreen";
import { Avatar, Ticks, useNow, useStore } from "./bits";
import { ChatIcon, LogoutIcon, UsersIcon } from "./icons";

/** Says when the app is not connected, and how many messages wait to be sent. */
export function ConnectionBanner(props: { store: ChatStore; testid: string }) {
  const s = props.store;
  if (s.connection === "online") return null;
  const count = Math.max(s.outboxPending, s.pending.length);
  const text = s.connection === "connecting" ? "Connecting…" : "Offline. Messages are sent when the connection is back.";
  return (
    <div
      class={`banner banner-${s.connection}`}
      data-testid={props.testid}
      data-state={s.connection}
      data-outbox={s.outboxPending}
      role="status"
    >
      <span>{text}</span>
      {count > 0 ? (
        <span class="banner-count" data-testid="outbox-pending">
          {count} waiting
        </span>
      ) : null}
    </div>
  );
}

function previewText(store: ChatStore, c: ChatConversation, text: string, attachments: Attachment[], sender: bigint): string {
  let body = text.replace(/\s+/g, " ").trim();
  if (attachments.length > 0) {
    const label = attachments.every((a) => a.mime.startsWith("image/")) ? "📷 Photo" : "📎 File";
    body = body ? `${label} · ${body}` : label;
  }
  if (c.kind === "group" && sender !== store.me) {
    const who = store.nameOf(sender);
    if (who) body = `${who}: ${body}`;
  }
  return body;
}

/** The list's line under a conversation's title: its newest message, waiting ones first. */
function preview(store: ChatStore, c: ChatConversation): { text: string; tick: Tick | null } {
  const waiting = store.pendingIn(c.id);
  const p = waiting[waiting.length - 1];
  if (p) return { text: previewText(store, c, p.text, p.attachments, store.me), tick: "pending" };
  const m = c.lastMessage;
  if (!m) return { text: c.kind === "group" ? "Group created" : "No messages yet", tick: null };
  const tick = m.sender === store.me ? store.tickOf(m) : null;
  return { text: previewText(store, c, m.text, m.attachments, m.sender), tick };
}

function Row(props: { c: ChatConversation; active: boolean; now: number; onOpen: (id: bigint) => void }) {
  const store = useStore();
  const { c } = props;
  const title = store.titleOf(c);
  const typists = store.typistsIn(c.id);
  const online = c.kind === "direct" && (store.presence.get(c.peer)?.online ?? false);
  const p = preview(store, c);
  const last = c.lastMessage;
  return (
    <li>
      <button
        class={props.active ? "conv active" : "conv"}
        onClick={() => props.onOpen(c.id)}
        data-testid="conversation"
        data-title={title}
        data-unread={c.unread}
      >
        <Avatar name={title} online={online} group={c.kind === "group"} />
        <span class="conv-body">
          <span class="conv-top">
            <span class="conv-title">{title || "…"}</span>
            {last ? <span class={c.unread > 0 ? "conv-time unread" : "conv-time"}>{listTime(last.tsMs, props.now)}</span> : null}
          </span>
          <span class="conv-bottom">
            {typists.length > 0 ? (
              <span class="conv-preview typing" data-testid="conversation-typing">
                {c.kind === "group" ? `${nameList(typists.map((u) => store.nameOf(u)))} typing…` : "typing…"}
              </span>
            ) : (
              <span class="conv-preview">
                {p.tick ? <Ticks tick={p.tick} /> : null}
                <span class="conv-preview-text">{p.text}</span>
              </span>
            )}
            {c.unread > 0 ? (
              <span class="badge" data-testid="unread-badge">
                {c.unread > 999 ? "999+" : c.unread}
              </span>
            ) : null}
          </span>
        </span>
      </button>
    </li>
  );
}

export function Sidebar(props: { onOpen: (id: bigint) => void; onNew: (d: Dialog) => void; onLogout: () => void }) {
  const store = useStore();
  const now = useNow();
  const list = store.sortedConversations();
  return (
    <aside class="sidebar" aria-label="Conversations">
      <header class="sidebar-head">
        <Avatar name={store.username} size={36} />
        <span class="me" data-testid="me">
          {store.username}
        </span>
        <span class="grow" />
        <button class="icon-button" title="New chat" aria-label="New chat" onClick={() => props.onNew("direct")} data-testid="new-chat">
          <ChatIcon />
        </button>
        <button class="icon-button" title="New group" aria-label="New group" onClick={() => props.onNew("group")} data-testid="new-group">
          <UsersIcon />
        </button>
        <button class="icon-button" title="Sign out" aria-label="Sign out" onClick={props.onLogout} data-testid="logout">
          <LogoutIcon />
        </button>
      </header>
      <ConnectionBanner store={store} testid="connection" />
      <ul class="conv-list" data-testid="conversation-list">
        {list.map((c) => (
          <Row key={c.id.toString()} c={c} active={store.activeId === c.id} now={now} onOpen={props.onOpen} />
        ))}
      </ul>
      {store.listLoaded && list.length === 0 ? (
        <div class="list-empty">
          <p>No conversations yet.</p>
          <button class="primary" onClick={() => props.onNew("direct")}>
            Start a chat
          </button>
        </div>
      ) : null}
      {!store.listLoaded ? <div class="list-empty muted">Loading conversations…</div> : null}
    </aside>
  );
}
