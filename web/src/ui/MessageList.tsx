// The messages of the open conversation, oldest at the top. Scrolling near the top loads the page
// before; the view stays pinned to the bottom while the reader is there, and keeps its place when
// older messages are put above it.

import type { Attachment } from "@tern/client";
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { bytes, clockTime, dayLabel, fileNameFor, hueOf, isImage, sameDay } from "../format";
import type { ChatConversation, ChatMessage } from "../model";
import { IMAGE_AUTOLOAD_BYTES_MAX, type PendingMessage } from "../store";
import { Progress, Spinner, Ticks, useNow, useStore } from "./bits";
import { ChevronDownIcon, DownloadIcon, FileIcon } from "./icons";

/** Within this distance of the bottom (px), the view follows new messages. */
const STICK_PX = 80;
/** Within this distance of the top (px), the previous page is loaded. */
const LOAD_OLDER_PX = 160;
/** Messages of one sender closer than this share one run (no repeated name, a smaller gap). */
const RUN_GAP_MS = 5 * 60_000;

function saveFile(url: string, name: string): void {
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.rel = "noopener";
  document.body.appendChild(a);
  a.click();
  a.remove();
}

function AttachmentView(props: { a: Attachment; name: string; onMediaLoad: () => void }) {
  const store = useStore();
  const { a } = props;
  const t = store.downloads.get(a.mediaId);
  const image = isImage(a.mime);
  const size = Number(a.size);
  useEffect(() => {
    if (image && !t && size <= IMAGE_AUTOLOAD_BYTES_MAX) void store.download(a);
  }, [a.mediaId]);

  if (image && t?.url) {
    return (
      <a class="att-image" href={t.url} download={props.name} title={props.name}>
        <img src={t.url} alt={props.name} onLoad={props.onMediaLoad} data-testid="attachment-image" />
      </a>
    );
  }
  const busy = t !== undefined && !t.url && !t.error;
  return (
    <div class={image ? "att-file att-image-loading" : "att-file"} data-testid="attachment">
      <span class="att-icon">
        <FileIcon size={22} />
      </span>
      <span class="att-meta">
        <span class="att-name" data-testid="attachment-name">
          {props.name}
        </span>
        <span class="att-size">
          {bytes(size)} · {a.mime}
        </span>
        {busy ? <Progress done={t.got} total={t.total} testid="download-progress" /> : null}
        {t?.error ? <span class="att-error">{t.error}</span> : null}
      </span>
      <button
        class="icon-button"
        aria-label={`Download ${props.name}`}
        title="Download"
        disabled={busy}
        data-testid="attachment-download"
        onClick={async () => {
          const done = await store.download(a);
          if (done.url) saveFile(done.url, props.name);
        }}
      >
        {busy ? <Spinner /> : <DownloadIcon />}
      </button>
    </div>
  );
}

function Bubble(props: {
  m: ChatMessage | PendingMessage;
  mine: boolean;
  author: string;
  showAuthor: boolean;
  runStart: boolean;
  onMediaLoad: () => void;
}) {
  const store = useStore();
  const { m } = props;
  const pending = !("seq" in m);
  const tsMs = pending ? m.createdAtMs : m.tsMs;
  // A body that only names an attached file is the file's name, not a caption.
  const names = m.attachments.map((a, i) => fileNameFor(m.attachments.length === 1 ? m.text : "", a.mime, i));
  const caption = m.attachments.length === 1 && names[0] === m.text.trim() ? "" : m.text;
  const cls = ["msg", props.mine ? "mine" : "theirs", props.runStart ? "run-start" : ""].join(" ");
  return (
    <div
      class={cls}
      data-testid="message"
      data-mine={props.mine ? "true" : "false"}
      data-pending={pending ? "true" : "false"}
      data-seq={pending ? "" : m.seq.toString()}
    >
      {props.showAuthor ? (
        <div class="msg-author" style={{ color: `hsl(${hueOf(props.author)} 50% 38%)` }}>
          {props.author}
        </div>
      ) : null}
      {m.attachments.map((a, i) => (
        <AttachmentView key={a.mediaId.toString()} a={a} name={names[i]} onMediaLoad={props.onMediaLoad} />
      ))}
      <div class="msg-line">
        {caption ? (
          <span class="msg-text" data-testid="message-text">
            {caption}
          </span>
        ) : null}
        <span class="msg-meta">
          {clockTime(tsMs)}
          {props.mine ? <Ticks tick={pending ? "pending" : store.tickOf(m)} /> : null}
        </span>
      </div>
    </div>
  );
}

export function MessageList(props: { conversation: ChatConversation }) {
  const store = useStore();
  const now = useNow(60_000);
  const c = props.conversation;
  const t = store.timelines.get(c.id);
  const pending = store.pendingIn(c.id);
  const el = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  /** Whether the reader scrolled up, away from the newest messages: a button leads back. */
  const [away, setAway] = useState(false);
  /** While older messages load, the distance from the bottom to keep. */
  const keepFromBottom = useRef<number | null>(null);

  useLayoutEffect(() => {
    const box = el.current;
    if (!box) return;
    if (keepFromBottom.current !== null) {
      box.scrollTop = box.scrollHeight - keepFromBottom.current;
      if (!t?.loadingOlder) keepFromBottom.current = null;
      return;
    }
    if (stick.current) box.scrollTop = box.scrollHeight;
  });

  // A window resized (or a phone turned) keeps a reader at the bottom there.
  useEffect(() => {
    const box = el.current;
    if (!box || typeof ResizeObserver === "undefined") return;
    const watch = new ResizeObserver(() => {
      if (stick.current && keepFromBottom.current === null) box.scrollTop = box.scrollHeight;
    });
    watch.observe(box);
    return () => watch.disconnect();
  }, []);

  const loadOlder = () => {
    const box = el.current;
    if (!box || !t || !t.hasMore || t.loadingOlder) return;
    keepFromBottom.current = box.scrollHeight - box.scrollTop;
    void store.loadOlder(c.id);
  };

  // A first page too short to scroll cannot be scrolled up: load more until it fills the view.
  useEffect(() => {
    const box = el.current;
    if (box && t?.loaded && t.hasMore && !t.loadingOlder && box.scrollHeight <= box.clientHeight + 8) loadOlder();
  });

  const onScroll = () => {
    const box = el.current;
    if (!box) return;
    stick.current = box.scrollHeight - box.scrollTop - box.clientHeight < STICK_PX;
    if (away === stick.current) setAway(!stick.current);
    if (box.scrollTop < LOAD_OLDER_PX) loadOlder();
  };
  const onMediaLoad = () => {
    const box = el.current;
    if (box && stick.current) box.scrollTop = box.scrollHeight;
  };

  const items: (ChatMessage | PendingMessage)[] = [...(t?.messages ?? []), ...pending];
  const rows = [];
  let prev: ChatMessage | PendingMessage | null = null;
  for (const m of items) {
    const ts = "seq" in m ? m.tsMs : m.createdAtMs;
    const sender = "seq" in m ? m.sender : store.me;
    const prevTs = prev ? ("seq" in prev ? prev.tsMs : prev.createdAtMs) : 0;
    const prevSender = prev ? ("seq" in prev ? prev.sender : store.me) : null;
    const newDay = !prev || !sameDay(prevTs, ts);
    if (newDay) {
      rows.push(
        <div class="day" key={`d${ts}`}>
          <span>{dayLabel(ts, now)}</span>
        </div>,
      );
    }
    const runStart = newDay || prevSender !== sender || ts - prevTs > RUN_GAP_MS;
    const mine = sender === store.me;
    const key = "seq" in m ? `m${m.seq.toString()}` : `p${m.localId}`;
    rows.push(
      <Bubble
        key={key}
        m={m}
        mine={mine}
        author={mine ? "" : store.nameOf(sender)}
        showAuthor={c.kind === "group" && !mine && runStart}
        runStart={runStart}
        onMediaLoad={onMediaLoad}
      />,
    );
    prev = m;
  }

  const toNewest = () => {
    const box = el.current;
    if (box) box.scrollTo({ top: box.scrollHeight, behavior: "smooth" });
  };

  return (
    <div class="messages-frame">
      {away ? (
        <button
          class="to-newest"
          aria-label="Scroll to the newest messages"
          title="Newest messages"
          onClick={toNewest}
          data-testid="to-newest"
        >
          <ChevronDownIcon />
        </button>
      ) : null}
      <div class="messages" ref={el} onScroll={onScroll} data-testid="messages">
        <div class="messages-inner">
          {t?.loadingOlder ? (
            <div class="older" data-testid="loading-older">
              <Spinner /> Loading older messages…
            </div>
          ) : null}
          {t?.loaded && !t.hasMore && items.length > 0 ? (
            <div class="older muted" data-testid="history-start">
              {c.kind === "group" ? "This is the start of the group." : "This is the start of your conversation."}
            </div>
          ) : null}
          {!t?.loaded && !t?.error ? (
            <div class="older">
              <Spinner />
            </div>
          ) : null}
          {t?.error ? <div class="older error">{t.error}</div> : null}
          {t?.loaded && items.length === 0 ? (
            <div class="no-messages">
              <p>No messages yet. Say hello!</p>
            </div>
          ) : null}
          {rows}
        </div>
      </div>
    </div>
  );
}
