// How times, sizes and names are written on screen. Pure functions of their arguments (the clock is
// passed in), so they are unit-tested without a browser.

const DAY_MS = 24 * 60 * 60 * 1000;

function startOfDay(ms: number): number {
  const d = new Date(ms);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

export function clockTime(ms: number): string {
  return new Date(ms).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

/** A message's time in the conversation list: the time today, a weekday this week, else a date. */
export function listTime(ms: number, nowMs: number): string {
  const today = startOfDay(nowMs);
  if (ms >= today) return clockTime(ms);
  if (ms >= today - DAY_MS) return "Yesterday";
  if (ms >= today - 6 * DAY_MS) return new Date(ms).toLocaleDateString(undefined, { weekday: "short" });
  return new Date(ms).toLocaleDateString(undefined, { day: "numeric", month: "short", year: "2-digit" });
}

/** The label of a day separator in a conversation. */
export function dayLabel(ms: number, nowMs: number): string {
  const today = startOfDay(nowMs);
  if (ms >= today) return "Today";
  if (ms >= today - DAY_MS) return "Yesterday";
  return new Date(ms).toLocaleDateString(undefined, { weekday: "long", day: "numeric", month: "long" });
}

export function sameDay(a: number, b: number): boolean {
  return startOfDay(a) === startOfDay(b);
}

/** "last seen just now", "last seen 5 min ago", "last seen today at 09:12", ... */
export function lastSeen(ms: number, nowMs: number): string {
  const ago = Math.max(0, nowMs - ms);
  if (ago < 60_000) return "last seen just now";
  if (ago < 60 * 60_000) return `last seen ${Math.floor(ago / 60_000)} min ago`;
  const today = startOfDay(nowMs);
  if (ms >= today) return `last seen today at ${clockTime(ms)}`;
  if (ms >= today - DAY_MS) return `last seen yesterday at ${clockTime(ms)}`;
  return `last seen ${new Date(ms).toLocaleDateString(undefined, { day: "numeric", month: "short" })}`;
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10 * 1024 ? 1 : 0)} KB`;
  if (n < 1024 * 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1)} MB`;
  return `${(n / (1024 * 1024 * 1024)).toFixed(1)} GB`;
}

/** Up to two letters for an avatar: "Alice Smith" → "AS", "bob" → "B". */
export function initials(name: string): string {
  const words = name.trim().split(/[\s._-]+/).filter((w) => w.length > 0);
  if (words.length === 0) return "?";
  const first = Array.from(words[0])[0] ?? "?";
  const second = words.length > 1 ? (Array.from(words[1])[0] ?? "") : "";
  return (first + second).toUpperCase();
}

/** A stable hue for a name, so a person keeps the same avatar colour everywhere. */
export function hueOf(name: string): number {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 16777619);
  }
  return (h >>> 0) % 360;
}

/** A list of names as a sentence: "Ann", "Ann and Bo", "Ann, Bo and Cy", "Ann, Bo and 3 others". */
export function nameList(names: string[], max = 3): string {
  if (names.length <= 1) return names[0] ?? "";
  if (names.length <= max) return `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
  const rest = names.length - (max - 1);
  return `${names.slice(0, max - 1).join(", ")} and ${rest} others`;
}

const EXTENSIONS: Record<string, string> = {
  "image/png": "png",
  "image/jpeg": "jpg",
  "image/gif": "gif",
  "image/webp": "webp",
  "image/svg+xml": "svg",
  "application/pdf": "pdf",
  "text/plain": "txt",
  "application/zip": "zip",
  "audio/mpeg": "mp3",
  "video/mp4": "mp4",
};

/** A file name for a download: the message text when it looks like one, else from the type. */
export function fileNameFor(text: string, mime: string, index: number): string {
  const t = text.trim();
  if (t.length > 0 && t.length <= 128 && !t.includes("\n") && /\.[A-Za-z0-9]{1,8}$/.test(t) && !/[\\/]/.test(t)) return t;
  const ext = EXTENSIONS[mime] ?? "bin";
  return `attachment-${index + 1}.${ext}`;
}

export function isImage(mime: string): boolean {
  return /^image\/(png|jpeg|gif|webp|avif|bmp)$/.test(mime);
}
