// Dialogs to start a direct chat by username and to create a group from usernames.

import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { describeError } from "../account";
import { Avatar, Spinner, useStore } from "./bits";
import { CloseIcon } from "./icons";

/** Members picked when creating a group (ternd's default group limit is 100, the creator included). */
const GROUP_PICK_MAX = 99;

export function Modal(props: { title: string; onClose: () => void; children: ComponentChildren; testid: string }) {
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => e.key === "Escape" && props.onClose();
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);
  return (
    <div class="modal-backdrop" onClick={(e) => e.target === e.currentTarget && props.onClose()}>
      <div class="modal" role="dialog" aria-modal="true" aria-label={props.title} data-testid={props.testid}>
        <header class="modal-head">
          <h2>{props.title}</h2>
          <button class="icon-button" aria-label="Close" onClick={props.onClose}>
            <CloseIcon />
          </button>
        </header>
        {props.children}
      </div>
    </div>
  );
}

function lookupError(e: unknown, username: string): string {
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === "string" && code.toUpperCase() === "NOT_FOUND") return `No one is called “${username}”.`;
  return describeError(e);
}

export function NewChatDialog(props: { onClose: () => void; onOpened: (id: bigint) => void }) {
  const store = useStore();
  const [username, setUsername] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");
  const input = useRef<HTMLInputElement>(null);
  useEffect(() => input.current?.focus(), []);

  async function submit(e: Event) {
    e.preventDefault();
    const name = username.trim().toLowerCase();
    if (!name) return;
    if (name === store.username) return setError("That is you. Pick someone else.");
    setBusy(true);
    setError("");
    try {
      props.onOpened(await store.startDirect(name));
    } catch (err) {
      setError(lookupError(err, name));
      setBusy(false);
    }
  }

  return (
    <Modal title="New chat" onClose={props.onClose} testid="new-chat-dialog">
      <form class="modal-body" onSubmit={submit}>
        <label class="field">
          <span>Username</span>
          <input
            ref={input}
            value={username}
            placeholder="e.g. bob"
            autocapitalize="none"
            spellcheck={false}
            onInput={(e) => setUsername(e.currentTarget.value)}
            data-testid="new-chat-username"
          />
        </label>
        {error ? (
          <p class="form-error" role="alert" data-testid="dialog-error">
            {error}
          </p>
        ) : null}
        <div class="modal-actions">
          <button type="button" onClick={props.onClose}>
            Cancel
          </button>
          <button class="primary" type="submit" disabled={busy || !username.trim()} data-testid="new-chat-submit">
            {busy ? <Spinner /> : null}
            Start chat
          </button>
        </div>
      </form>
    </Modal>
  );
}

/** An input that turns typed usernames into people, shown as removable chips. */
export function PeoplePicker(props: {
  picked: { userId: bigint; username: string }[];
  onChange: (p: { userId: bigint; username: string }[]) => void;
  exclude: bigint[];
  max: number;
}) {
  const store = useStore();
  const [value, setValue] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");

  async function add() {
    const name = value.trim().toLowerCase();
    if (!name) return;
    if (props.picked.length >= props.max) return setError(`At most ${props.max} people.`);
    setBusy(true);
    setError("");
    try {
      const user = await store.lookup(name);
      if (props.exclude.includes(user.userId) || props.picked.some((p) => p.userId === user.userId)) {
        setError(user.userId === store.me ? "You are in it already." : `${user.username} is in it already.`);
      } else {
        props.onChange([...props.picked, user]);
        setValue("");
      }
    } catch (e) {
      setError(lookupError(e, name));
    }
    setBusy(false);
  }

  return (
    <div class="picker">
      <div class="chips">
        {props.picked.map((p) => (
          <span class="chip" key={p.userId.toString()} data-testid="picked-person">
            <Avatar name={p.username} size={22} />
            {p.username}
            <button
              type="button"
              class="chip-x"
              aria-label={`Remove ${p.username}`}
              onClick={() => props.onChange(props.picked.filter((x) => x.userId !== p.userId))}
            >
              <CloseIcon size={14} />
            </button>
          </span>
        ))}
      </div>
      <div class="row gap">
        <input
          value={value}
          placeholder="Add someone by username"
          autocapitalize="none"
          spellcheck={false}
          onInput={(e) => setValue(e.currentTarget.value)}
          onKeyDown={(e) => {
            if (e.key === "Enter") {
              e.preventDefault();
              void add();
            }
          }}
          data-testid="people-input"
        />
        <button type="button" onClick={() => void add()} disabled={busy || !value.trim()} data-testid="people-add">
          {busy ? <Spinner /> : null}
          Add
        </button>
      </div>
      {error ? (
        <p class="form-error" role="alert" data-testid="dialog-error">
          {error}
        </p>
      ) : null}
    </div>
  );
}

export function NewGroupDialog(props: { onClose: () => void; onOpened: (id: bigint) => void }) {
  const store = useStore();
  const [name, setName] = useState("");
  const [picked, setPicked] = useState<{ userId: bigint; username: string }[]>([]);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");

  async function submit(e: Event) {
    e.preventDefault();
    if (!name.trim()) return setError("Give the group a name.");
    setBusy(true);
    setError("");
    try {
      props.onOpened(await store.createGroup(name, picked.map((p) => p.userId)));
    } catch (err) {
      setError(describeError(err));
      setBusy(false);
    }
  }

  return (
    <Modal title="New group" onClose={props.onClose} testid="new-group-dialog">
      <form class="modal-body" onSubmit={submit}>
        <label class="field">
          <span>Group name</span>
          <input
            value={name}
            maxLength={128}
            placeholder="e.g. Weekend trip"
            onInput={(e) => setName(e.currentTarget.value)}
            data-testid="group-name"
          />
        </label>
        <div class="field">
          <span>Members</span>
          <PeoplePicker picked={picked} onChange={setPicked} exclude={[store.me]} max={GROUP_PICK_MAX} />
        </div>
        {error ? (
          <p class="form-error" role="alert">
            {error}
          </p>
        ) : null}
        <div class="modal-actions">
          <button type="button" onClick={props.onClose}>
            Cancel
          </button>
          <button class="primary" type="submit" disabled={busy || !name.trim()} data-testid="group-create">
            {busy ? <Spinner /> : null}
            Create group
          </button>
        </div>
      </form>
    </Modal>
  );
}
