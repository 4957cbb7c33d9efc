// The chat screen: the conversation list and the open conversation side by side on a wide screen,
// one at a time on a phone. The open conversation is in the address (#c=ID), so the browser's back
// button returns to the list and a reload reopens it.

import { useEffect, useRef, useState } from "preact/hooks";
import { ConversationPane } from "./ConversationPane";
import { NewChatDialog, NewGroupDialog } from "./dialogs";
import { Sidebar } from "./Sidebar";
import { useStore, useStoreVersion } from "./bits";
import { CloseIcon } from "./icons";

function conversationInHash(): bigint | null {
  const m = /^#c=(\d{1,20})$/.exec(location.hash);
  if (!m) return null;
  try {
    return BigInt(m[1]);
  } catch {
    return null;
  }
}

export type Dialog = "none" | "direct" | "group";

export function ChatScreen(props: { onLogout: () => void }) {
  const store = useStore();
  useStoreVersion(store);
  const [dialog, setDialog] = useState<Dialog>("none");
  const stepped = useRef(false);

  useEffect(() => {
    const follow = () => {
      const id = conversationInHash();
      if (id === null) stepped.current = false;
      void store.openConversation(id);
    };
    follow();
    window.addEventListener("popstate", follow);
    const onVisibility = () => store.setVisible(document.visibilityState === "visible");
    document.addEventListener("visibilitychange", onVisibility);
    return () => {
      window.removeEventListener("popstate", follow);
      document.removeEventListener("visibilitychange", onVisibility);
    };
  }, [store]);

  useEffect(() => {
    const unread = store.totalUnread();
    document.title = unread > 0 ? `(${unread}) Tern` : "Tern";
  });

  // Opening a conversation from the list is a step the browser's back button undoes; switching
  // between conversations replaces the step, so "back" always leads to the list.
  const open = (id: bigint) => {
    const current = conversationInHash();
    if (current === id) return;
    const url = `${location.pathname}${location.search}#c=${id.toString()}`;
    if (current === null) {
      stepped.current = true;
      history.pushState(null, "", url);
    } else {
      history.replaceState(null, "", url);
    }
    void store.openConversation(id);
  };
  const back = () => {
    if (stepped.current) {
      stepped.current = false;
      history.back();
      return;
    }
    history.replaceState(null, "", location.pathname + location.search);
    void store.openConversation(null);
  };

  const active = store.activeId !== null ? (store.conversations.get(store.activeId) ?? null) : null;
  return (
    <div class={active ? "shell has-active" : "shell"}>
      <Sidebar onOpen={open} onNew={setDialog} onLogout={props.onLogout} />
      <section class="main" aria-label="Conversation">
        {active ? (
          <ConversationPane key={active.id.toString()} conversation={active} onBack={back} />
        ) : (
          <div class="empty-main">
            <div class="empty-card">
              <h2>Welcome, {store.username}</h2>
              <p>Pick a conversation on the left, or start a new one.</p>
              <div class="row gap center">
                <button class="primary" onClick={() => setDialog("direct")}>
                  New chat
                </button>
                <button onClick={() => setDialog("group")}>New group</button>
              </div>
            </div>
          </div>
        )}
      </section>
      {dialog === "direct" ? (
        <NewChatDialog
          onClose={() => setDialog("none")}
          onOpened={(id) => {
            setDialog("none");
            open(id);
          }}
        />
      ) : null}
      {dialog === "group" ? (
        <NewGroupDialog
          onClose={() => setDialog("none")}
          onOpened={(id) => {
            setDialog("none");
            open(id);
          }}
        />
      ) : null}
      {store.listError ? (
        <div class="toast" role="alert" data-testid="toast">
          <span>{store.listError}</span>
          <button class="icon-button" aria-label="Dismiss" onClick={() => store.clearError()}>
            <CloseIcon size={16} />
          </button>
        </div>
      ) : null}
    </div>
  );
}
