// Temporary declarations of @tern/client's public API, used until the package builds beside this one.
declare module "@tern/client" {
  export type WebSocketCtor = new (url: string, protocols?: string | string[]) => WebSocket;
  export interface Storage {}
  export class MemoryStorage implements Storage {}
  export class IndexedDbStorage implements Storage {
    constructor(name?: string);
  }
  export class TernError extends Error {
    code: string;
  }
  export interface Attachment {
    mediaId: bigint;
    size: bigint;
    mime: string;
  }
  export interface Member {
    userId: bigint;
    role: unknown;
  }
  export interface Message {
    conversationId: bigint;
    seq: bigint;
    messageId: bigint;
    sender: bigint;
    senderDevice: number;
    ts: bigint;
    clientMsgId: Uint8Array;
    body: string;
    attachments: Attachment[];
  }
  export interface ConversationInfo {
    conversationId: bigint;
    kind: unknown;
    name: string;
    createdAt: bigint;
    lastSeq: bigint;
    readSeq: bigint;
    unread: bigint;
    members: Member[];
  }
  export interface ConversationSummary {
    conversationId: bigint;
    kind: unknown;
    name: string;
    peer: bigint;
    lastSeq: bigint;
    readSeq: bigint;
    unread: bigint;
    lastMessage?: Message | null;
  }
  export interface Presence {
    userId: bigint;
    online: boolean;
    lastSeen?: bigint | null;
  }
  export interface SessionEvents {
    message: {
      conversationId: bigint;
      seq: bigint;
      messageId: bigint;
      sender: bigint;
      sentAt: bigint;
      body: Uint8Array;
      text?: string;
      attachments: Attachment[];
    };
    receipt: { conversationId: bigint; userId: bigint; kind: "delivered" | "read"; upToSeq: bigint };
    typing: { conversationId: bigint; userId: bigint; typing: boolean };
    presence: { userId: bigint; online: boolean; lastSeen?: bigint | null };
    conversation: { conversationId: bigint };
    state: { state: "connecting" | "online" | "offline"; error?: unknown };
    outbox: { pending: number };
  }
  export interface SessionOptions {
    url: string;
    storage: Storage;
    auth: { kind: "register" | "login"; username: string; password: string } | { kind: "resume" };
    deviceName?: string;
    WebSocket?: WebSocketCtor;
  }
  export class Session {
    static start(opts: SessionOptions): Promise<Session>;
    readonly userId: bigint;
    readonly deviceId: number;
    readonly username: string;
    on<K extends keyof SessionEvents>(type: K, fn: (e: SessionEvents[K]) => void): () => void;
    send(
      conversationId: bigint,
      body: string | Uint8Array,
      opts?: { attachments?: Attachment[] },
    ): Promise<{ seq: bigint; messageId: bigint }>;
    openDirect(userId: bigint): Promise<ConversationInfo>;
    lookupUser(username: string): Promise<{ userId: bigint; username: string }>;
    getUsers(ids: bigint[]): Promise<Map<bigint, string>>;
    listConversations(): Promise<ConversationSummary[]>;
    getConversation(id: bigint): Promise<ConversationInfo>;
    history(
      conversationId: bigint,
      opts?: { before?: bigint; limit?: number },
    ): Promise<{ messages: Message[]; hasMore: boolean }>;
    markRead(conversationId: bigint, upToSeq: bigint): Promise<void>;
    typing(conversationId: bigint, typing: boolean): void;
    subscribePresence(userIds: bigint[]): Promise<Presence[]>;
    createGroup(name: string, memberIds: bigint[]): Promise<ConversationInfo>;
    addMembers(id: bigint, userIds: bigint[]): Promise<void>;
    removeMember(id: bigint, userId: bigint): Promise<void>;
    leaveGroup(id: bigint): Promise<void>;
    renameGroup(id: bigint, name: string): Promise<void>;
    upload(
      data: Uint8Array,
      opts: { mime: string; name?: string; onProgress?: (sent: number, total: number) => void },
    ): Promise<Attachment>;
    download(mediaId: bigint, opts?: { onProgress?: (got: number, total: number) => void }): Promise<Uint8Array>;
    pendingOutbox(): number;
    logout(): Promise<void>;
    close(): Promise<void>;
  }
}
