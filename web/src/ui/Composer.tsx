// The message composer: a growing text box (Enter sends, Shift+Enter breaks the line), attachments
// that start uploading as soon as they are picked, with a progress bar each, and the send button.

import type { Attachment } from "@tern/client";
import { useEffect, useRef, useState } from "preact/hooks";
import { bytes, isImage } from "../format";
import { Progress, Spinner, useStore } from "./bits";
import { ClipIcon, CloseIcon, FileIcon, SendIcon } from "./icons";

/** Attachments one message may carry (spec §6.6). */
const ATTACHMENTS_PER_MESSAGE_MAX = 16;
/** The text box grows up to this height (px), then scrolls. */
const COMPOSER_HEIGHT_MAX_PX = 160;

interface Staged {
  key: number;
  file: File;
  preview: string;
  sent: number;
  total: number;
  attachment: Attachment | null;
  error: string;
}

/** Drafts per conversation, kept while the page lives. */
const drafts = new Map<bigint, string>();
let stagedKeys = 0;

export function Composer(props: { conversationId: bigint }) {
  const store = useStore();
  const id = props.conversationId;
  const [text, setText] = useState(drafts.get(id) ?? "");
  const [staged, setStaged] = useState<Staged[]>([]);
  const [sendWhenReady, setSendWhenReady] = useState(false);
  const box = useRef<HTMLTextAreaElement>(null);
  const fileInput = useRef<HTMLInputElement>(null);
  const alive = useRef(true);

  useEffect(() => {
    alive.current = true;
    return () => {
      alive.current = false;
    };
  }, []);
  useEffect(() => () => staged.forEach((s) => s.preview && URL.revokeObjectURL(s.preview)), []);

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    el.style.height = "auto";
    el.style.height = `${Math.min(COMPOSER_HEIGHT_MAX_PX, el.scrollHeight)}px`;
  }, [text]);

  const update = (key: number, patch: Partial<Staged>) => {
    if (!alive.current) return;
    setStaged((list) => list.map((s) => (s.key === key ? { ...s, ...patch } : s)));
  };

  const pick = (files: FileList | null) => {
    if (!files) return;
    const room = ATTACHMENTS_PER_MESSAGE_MAX - staged.length;
    const chosen = Array.from(files).slice(0, Math.max(0, room));
    const added: Staged[] = chosen.map((file) => ({
      key: ++stagedKeys,
      file,
      preview: isImage(file.type) ? URL.createObjectURL(file) : "",
      sent: 0,
      total: file.size,
      attachment: null,
      error: "",
    }));
    setStaged((list) => [...list, ...added]);
    for (const s of added) {
      store
        .upload(s.file, (sent, total) => update(s.key, { sent, total }))
        .then((attachment) => update(s.key, { attachment, sent: s.file.size }))
        .catch((e: unknown) => update(s.key, { error: e instanceof Error ? e.message : String(e) }));
    }
    if (fileInput.current) fileInput.current.value = "";
    box.current?.focus();
  };

  const uploading = staged.some((s) => !s.attachment && !s.error);
  const ready = staged.filter((s) => s.attachment);
  const canSend = text.trim().length > 0 || ready.length > 0;

  const send = () => {
    if (uploading) {
      // Sent as soon as the uploads finish.
      setSendWhenReady(true);
      return;
    }
    if (!canSend) return;
    const attachments = ready.map((s) => s.attachment as Attachment);
    let body = text.trim();
    // A lone file without a caption carries its name as the body, so the other side can save it
    // under that name (attachments themselves have no name on the wire).
    if (body === "" && attachments.length === 1 && !isImage(attachments[0].mime)) body = ready[0].file.name;
    store.send(id, body, attachments);
    for (const s of staged) if (s.preview) URL.revokeObjectURL(s.preview);
    setStaged([]);
    setText("");
    drafts.delete(id);
    setSendWhenReady(false);
  };

  useEffect(() => {
    if (sendWhenReady && !uploading) send();
  }, [sendWhenReady, uploading]);

  return (
    <div class="composer-wrap">
      {staged.length > 0 ? (
        <div class="staged" data-testid="staged">
          {staged.map((s) => (
            <div class={s.error ? "staged-item failed" : "staged-item"} key={s.key} data-testid="staged-item">
              {s.preview ? <img src={s.preview} alt="" /> : <FileIcon size={22} />}
              <span class="staged-meta">
                <span class="staged-name">{s.file.name}</span>
                <span class="staged-size">
                  {s.error ? s.error : s.attachment ? `${bytes(s.file.size)} · ready` : `${bytes(s.sent)} of ${bytes(s.total)}`}
                </span>
                {!s.attachment && !s.error ? <Progress done={s.sent} total={s.total} testid="upload-progress" /> : null}
              </span>
              <button
                class="icon-button small"
                aria-label={`Remove ${s.file.name}`}
                onClick={() => setStaged((list) => list.filter((x) => x.key !== s.key))}
              >
                <CloseIcon size={16} />
              </button>
            </div>
          ))}
        </div>
      ) : null}
      <form
        class="composer"
        onSubmit={(e) => {
          e.preventDefault();
          send();
        }}
      >
        <button
          type="button"
          class="icon-button"
          aria-label="Attach files"
          title="Attach files"
          onClick={() => fileInput.current?.click()}
          data-testid="attach"
        >
          <ClipIcon />
        </button>
        <input
          ref={fileInput}
          type="file"
          multiple
          hidden
          onChange={(e) => pick(e.currentTarget.files)}
          data-testid="file-input"
        />
        <textarea
          ref={box}
          rows={1}
          placeholder="Message"
          value={text}
          onInput={(e) => {
            const v = e.currentTarget.value;
            setText(v);
            drafts.set(id, v);
            store.composing(id, v.trim().length > 0);
          }}
          onKeyDown={(e) => {
            if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
              e.preventDefault();
              send();
            }
          }}
          data-testid="composer-input"
        />
        <button
          type="submit"
          class="send"
          aria-label="Send"
          title="Send"
          disabled={!canSend && !uploading}
          data-testid="send"
        >
          {sendWhenReady ? <Spinner /> : <SendIcon />}
        </button>
      </form>
    </div>
  );
}
