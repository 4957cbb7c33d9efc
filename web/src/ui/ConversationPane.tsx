// One open conversation: a header with the other person's presence (or the group's members), the
// messages with older ones loaded on scrolling up, and the composer.

import { useState } from "preact/hooks";
import { lastSeen, nameList } from "../format";
import type { ChatConversation } from "../model";
import type { ChatStore } from "../store";
import { Avatar, useNow, useStore } from "./bits";
import { Composer } from "./Composer";
import { GroupInfo } from "./GroupInfo";
import { BackIcon, InfoIcon } from "./icons";
import { MessageList } from "./MessageList";
import { ConnectionBanner } from "./Sidebar";

function subtitle(store: ChatStore, c: ChatConversation, now: number): { text: string; typing: boolean } {
  const typists = store.typistsIn(c.id);
  if (typists.length > 0) {
    if (c.kind === "direct") return { text: "typing…", typing: true };
    const names = nameList(typists.map((u) => store.nameOf(u)).filter((n) => n));
    return { text: `${names} ${typists.length === 1 ? "is" : "are"} typing…`, typing: true };
  }
  if (c.kind === "direct") {
    const p = store.presence.get(c.peer);
    if (!p) return { text: "", typing: false };
    if (p.online) return { text: "online", typing: false };
    return { text: p.lastSeenMs !== null ? lastSeen(p.lastSeenMs, now) : "offline", typing: false };
  }
  if (!c.members) return { text: "", typing: false };
  const names = c.members
    .map((m) => (m.userId === store.me ? "You" : store.nameOf(m.userId)))
    .filter((n) => n)
    .sort((a, b) => (a === "You" ? 1 : b === "You" ? -1 : a.localeCompare(b)));
  const online = c.members.filter((m) => m.userId !== store.me && store.presence.get(m.userId)?.online).length;
  const list = nameList(names, 4);
  return { text: online > 0 ? `${list} · ${online} online` : list, typing: false };
}

export function ConversationPane(props: { conversation: ChatConversation; onBack: () => void }) {
  const store = useStore();
  const now = useNow();
  const c = props.conversation;
  const [info, setInfo] = useState(false);
  const title = store.titleOf(c);
  const sub = subtitle(store, c, now);
  const online = c.kind === "direct" && (store.presence.get(c.peer)?.online ?? false);
  return (
    <div class="pane">
      <header class="pane-head">
        <button class="icon-button back" aria-label="Back to conversations" onClick={props.onBack} data-testid="back">
          <BackIcon size={22} />
        </button>
        <button
          class="pane-title-button"
          onClick={() => c.kind === "group" && setInfo(!info)}
          disabled={c.kind !== "group"}
          data-testid="conversation-header"
        >
          <Avatar name={title} size={40} online={online} group={c.kind === "group"} />
          <span class="pane-titles">
            <span class="pane-title" data-testid="conversation-title">
              {title || "…"}
            </span>
            <span
              class={sub.typing ? "pane-sub typing" : "pane-sub"}
              data-testid={sub.typing ? "typing-indicator" : "presence"}
            >
              {sub.text || "\u00a0"}
            </span>
          </span>
        </button>
        {c.kind === "group" ? (
          <button
            class={info ? "icon-button on" : "icon-button"}
            aria-label="Group info"
            title="Group info"
            onClick={() => setInfo(!info)}
            data-testid="group-info-toggle"
          >
            <InfoIcon />
          </button>
        ) : null}
      </header>
      <ConnectionBanner store={store} testid="pane-connection" />
      <div class="pane-body">
        <div class="thread">
          <MessageList conversation={c} />
          <Composer conversationId={c.id} />
        </div>
        {info && c.kind === "group" ? <GroupInfo conversation={c} onClose={() => setInfo(false)} /> : null}
      </div>
    </div>
  );
}
