// Small pieces used across the screens: avatars, ticks, progress bars, the store hook and the clock.

import { createContext } from "preact";
import { useContext, useEffect, useState } from "preact/hooks";
import { hueOf, initials } from "../format";
import type { Tick } from "../receipts";
import type { ChatStore } from "../store";
import { ClockIcon, TickDouble, TickSent, UsersIcon } from "./icons";

export const StoreContext = createContext<ChatStore | null>(null);

/** The store of the signed-in user; every component under the chat screen has one. */
export function useStore(): ChatStore {
  const store = useContext(StoreContext);
  if (!store) throw new Error("useStore outside the chat screen");
  return store;
}

/** Re-renders the calling component whenever the store changes. */
export function useStoreVersion(store: ChatStore): number {
  const [version, setVersion] = useState(store.version);
  useEffect(() => store.subscribe(() => setVersion(store.version)), [store]);
  return version;
}

/** The current time, refreshed every `everyMs`, for labels such as "last seen 5 min ago". */
export function useNow(everyMs = 30_000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), everyMs);
    return () => clearInterval(t);
  }, [everyMs]);
  return now;
}

export function Avatar(props: { name: string; size?: number; online?: boolean; group?: boolean }) {
  const size = props.size ?? 44;
  const hue = hueOf(props.name || "?");
  const style = {
    width: `${size}px`,
    height: `${size}px`,
    fontSize: `${Math.round(size * 0.38)}px`,
    background: `hsl(${hue} 55% 88%)`,
    color: `hsl(${hue} 45% 30%)`,
  };
  return (
    <span class="avatar" style={style}>
      {props.group ? <UsersIcon size={Math.round(size * 0.45)} /> : props.name ? initials(props.name) : ""}
      {props.online ? <span class="avatar-dot" data-testid="online-dot" /> : null}
    </span>
  );
}

const TICK_LABELS: Record<Tick, string> = {
  pending: "Sending",
  sent: "Sent",
  delivered: "Delivered",
  read: "Read",
};

export function Ticks(props: { tick: Tick }) {
  const t = props.tick;
  return (
    <span class={`ticks ticks-${t}`} data-testid="tick" data-tick={t} title={TICK_LABELS[t]} aria-label={TICK_LABELS[t]}>
      {t === "pending" ? <ClockIcon /> : t === "sent" ? <TickSent /> : <TickDouble />}
    </span>
  );
}

export function Progress(props: { done: number; total: number; testid?: string }) {
  const pct = props.total > 0 ? Math.min(100, Math.round((props.done / props.total) * 100)) : 0;
  return (
    <span
      class="progress"
      role="progressbar"
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={pct}
      data-testid={props.testid}
    >
      <span class="progress-fill" style={{ width: `${pct}%` }} />
    </span>
  );
}

export function Spinner() {
  return <span class="spinner" aria-hidden="true" />;
}
