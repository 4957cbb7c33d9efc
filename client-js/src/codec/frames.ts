/**
 * Every frame body of protocol version 1 (spec §7 to §14 and §19): its fields, its type number and
 * its codec.
 *
 * A frame body is an object tagged by `type`, the frame's name in the spec (`{ type: "Ping", nonce }`),
 * so a `switch (body.type)` narrows it. {@link FRAME_TYPES} maps each name to its number and codec.
 *
 * @module
 */

import {
  ATTACHMENTS_PER_MESSAGE_MAX,
  BACKUP_ENTRIES_PER_REQUEST_MAX,
  BACKUP_ENTRY_ID_BYTES,
  BODY_CHARS_MAX,
  CLIENT_MSG_ID_BYTES,
  CONVERSATIONS_PAGE_MAX,
  DEVICE_NAME_BYTES_MAX,
  DEVICES_PER_USER_MAX,
  ERROR_MESSAGE_BYTES_MAX,
  GROUP_MEMBERS_MAX,
  GROUP_NAME_BYTES_MAX,
  HISTORY_PAGE_MESSAGES_MAX,
  KEY_CLAIMS_MAX,
  KEY_QUERY_USERS_MAX,
  MEDIA_CHUNK_BYTES_MAX,
  MIME_BYTES_MAX,
  ONE_TIME_KEYS_PER_DEVICE_MAX,
  PASSWORD_BYTES_MAX,
  PRESENCE_USERS_MAX,
  PUSH_APP_ID_BYTES_MAX,
  PUSH_TOKEN_BYTES_MAX,
  SHA256_BYTES,
  SOFTWARE_NAME_BYTES_MAX,
  SYNC_PAGE_UPDATES_MAX,
  TO_DEVICE_MESSAGES_PER_REQUEST_MAX,
  TO_DEVICE_PAGE_MESSAGES_MAX,
  TOKEN_BYTES,
  USERNAME_BYTES_MAX,
  USERS_PER_REQUEST_MAX,
} from "./limits.js";
import {
  type BackupEntry,
  type ClaimedKey,
  type DeviceAddress,
  type DeviceKeys,
  type SignedKey,
  type ToDeviceMessage,
  type ToDeviceOut,
  type UserDeviceKeys,
  backupEntry,
  claimedKey,
  deviceAddress,
  deviceKeys,
  signedKey,
  toDeviceMessage,
  toDeviceOut,
  userDeviceKeys,
} from "./e2e.js";
import {
  type Codec,
  appendedOption,
  bool,
  bytes,
  fixed,
  list,
  option,
  str,
  struct,
  tailFlag,
  text,
  u16,
  u32,
  u64,
} from "./primitives.js";
import {
  type ConversationInfo,
  type ConversationSummary,
  type DeviceInfo,
  type Message,
  type Presence,
  type PushPlatform,
  type Role,
  type ServerLimits,
  type Update,
  type UserInfo,
  conversationInfo,
  conversationSummary,
  deviceInfo,
  message,
  presence,
  pushPlatform,
  role,
  serverLimits,
  update,
  userInfo,
} from "./types.js";

/** Hello (`0x0001`, spec §8.1). */
export interface Hello {
  minVersion: number;
  maxVersion: number;
  clientName: string;
}
/** Ping (`0x0002`, spec §8.3). */
export interface Ping {
  nonce: bigint;
}
/** Register (`0x0010`, spec §9.1). */
export interface Register {
  username: string;
  password: string;
  deviceName: string;
}
/** Login (`0x0011`, spec §9.2). */
export interface Login {
  username: string;
  password: string;
  deviceName: string;
}
/** Resume (`0x0012`, spec §9.3). */
export interface Resume {
  token: Uint8Array;
}
/** A frame with an empty body: Ok, Logout, ListDevices, UnregisterPushToken, DeleteBackup. */
export type Empty = Record<never, never>;
/** RevokeDevice (`0x0015`, spec §9.7). */
export interface RevokeDevice {
  deviceId: number;
}
/** LookupUser (`0x0016`, spec §9.8). */
export interface LookupUser {
  username: string;
}
/** GetUsers (`0x0017`, spec §9.9). */
export interface GetUsers {
  userIds: bigint[];
}
/** Send (`0x0020`, spec §10.1). */
export interface Send {
  conversationId: bigint;
  clientMsgId: Uint8Array;
  body: string;
  attachments: bigint[];
}
/** Sync (`0x0021`, spec §10.3). */
export interface Sync {
  since: bigint;
  limit: number;
}
/** Ack (`0x0022`, spec §10.5). */
export interface Ack {
  upTo: bigint;
}
/** History (`0x0023`, spec §10.6). */
export interface History {
  conversationId: bigint;
  before: bigint;
  limit: number;
  /** Revision 1.1: page forwards, with the messages above `after` (0: from the first); left out to page backwards. */
  after?: bigint;
}
/** MarkRead (`0x0024`, spec §10.8). */
export interface MarkRead {
  conversationId: bigint;
  upToSeq: bigint;
}
/** Typing (`0x0025`, spec §12.5). */
export interface Typing {
  conversationId: bigint;
  active: boolean;
}
/** OpenDirect (`0x0030`, spec §11.1). */
export interface OpenDirect {
  userId: bigint;
  /**
   * Create the conversation encrypted end to end, if it does not exist yet (spec §19.7). A flag
   * appended to the body, written only when true; absent is false. Decoded, always a boolean.
   */
  encrypted?: boolean;
}
/** GetConversation (`0x0031`, spec §11.2). */
export interface GetConversation {
  conversationId: bigint;
}
/** ListConversations (`0x0032`, spec §11.4). */
export interface ListConversations {
  after: bigint;
  limit: number;
}
/** CreateGroup (`0x0033`, spec §11.6). */
export interface CreateGroup {
  name: string;
  members: bigint[];
  /**
   * Create the group encrypted end to end (spec §19.7). A flag appended to the body, written only
   * when true; absent is false. Decoded, always a boolean.
   */
  encrypted?: boolean;
}
/** AddMembers (`0x0034`, spec §11.7). */
export interface AddMembers {
  conversationId: bigint;
  members: bigint[];
}
/** RemoveMember (`0x0035`, spec §11.7). */
export interface RemoveMember {
  conversationId: bigint;
  userId: bigint;
}
/** LeaveGroup (`0x0036`, spec §11.7). */
export interface LeaveGroup {
  conversationId: bigint;
}
/** RenameGroup (`0x0037`, spec §11.7). */
export interface RenameGroup {
  conversationId: bigint;
  name: string;
}
/** SetRole (`0x0038`, spec §11.7). */
export interface SetRole {
  conversationId: bigint;
  userId: bigint;
  role: Role;
}
/** SubscribePresence (`0x0040`) and UnsubscribePresence (`0x0041`), spec §12.1 and §12.3. */
export interface PresenceUsers {
  users: bigint[];
}
/** SetPrivacy (`0x0042`, spec §12.4). */
export interface SetPrivacy {
  hideLastSeen: boolean;
}
/** RegisterPushToken (`0x0050`, spec §13.1). */
export interface RegisterPushToken {
  platform: PushPlatform;
  appId: string;
  token: string;
}
/** UploadBegin (`0x0060`, spec §14.1). */
export interface UploadBegin {
  size: bigint;
  mime: string;
  sha256: Uint8Array;
}
/** A request naming one media item: UploadStatus, UploadFinish, GetMedia (spec §14). */
export interface MediaRef {
  mediaId: bigint;
}
/** UploadChunk (`0x0062`, spec §14.3). */
export interface UploadChunk {
  mediaId: bigint;
  offset: bigint;
  data: Uint8Array;
}
/** Download (`0x0065`, spec §14.7). */
export interface Download {
  mediaId: bigint;
  offset: bigint;
  length: number;
}
/** PublishKeys (`0x0070`, spec §19.3.1). Every field may be empty: then it asks for the counts. */
export interface PublishKeys {
  /** The device's identity keys: required with its first keys, then absent or unchanged. */
  identity: DeviceKeys | null;
  /** One-time keys to add; a `keyId` the device already has is replaced. */
  oneTimeKeys: SignedKey[];
  /** A new fallback key, replacing the old one. */
  fallbackKey: SignedKey | null;
}
/** GetDeviceKeys (`0x0071`, spec §19.3.2). */
export interface GetDeviceKeys {
  userIds: bigint[];
}
/** ClaimKeys (`0x0072`, spec §19.3.3). */
export interface ClaimKeys {
  devices: DeviceAddress[];
}
/** SendToDevice (`0x0073`, spec §19.4.1). */
export interface SendToDevice {
  messages: ToDeviceOut[];
}
/** ToDeviceSync (`0x0074`, spec §19.4.2). */
export interface ToDeviceSync {
  /** The highest to-device `seq` the device has processed; 0n for none. */
  since: bigint;
  /** Most messages wanted; 0, or anything above 100, means 100. */
  limit: number;
}
/** ToDeviceAck (`0x0075`, spec §19.4.3), a notification. */
export interface ToDeviceAck {
  upTo: bigint;
}
/** PutBackup (`0x0076`, spec §19.6). */
export interface PutBackup {
  entries: BackupEntry[];
}
/** GetBackup (`0x0077`, spec §19.6). */
export interface GetBackup {
  /** Only entries with an id above this, compared as bytes; 32 zero bytes for the first page. */
  after: Uint8Array;
  /** Most entries wanted; 0, or anything above 256, means 256. */
  limit: number;
}

/** Error (`0x4000`, spec §8.6). */
export interface ErrorBody {
  code: number;
  retryAfterMs: number;
  message: string;
}
/** Welcome (`0x4002`, spec §8.2). */
export interface Welcome {
  version: number;
  serverName: string;
  serverTimeMs: bigint;
  limits: ServerLimits;
}
/** Pong (`0x4003`, spec §8.4). */
export interface Pong {
  nonce: bigint;
}
/** Authenticated (`0x4010`, spec §9.4). */
export interface Authenticated {
  userId: bigint;
  deviceId: number;
  username: string;
  token: Uint8Array | null;
}
/** Devices (`0x4011`, spec §9.6). */
export interface Devices {
  devices: DeviceInfo[];
}
/** Users (`0x4013`, spec §9.9). */
export interface Users {
  users: UserInfo[];
}
/** Sent (`0x4020`, spec §10.2). */
export interface Sent {
  conversationId: bigint;
  clientMsgId: Uint8Array;
  seq: bigint;
  messageId: bigint;
  ts: bigint;
}
/** SyncPage (`0x4021`, spec §10.4). */
export interface SyncPage {
  updates: Update[];
  hasMore: boolean;
  head: bigint;
}
/** HistoryPage (`0x4022`, spec §10.7). */
export interface HistoryPage {
  conversationId: bigint;
  messages: Message[];
  hasMore: boolean;
  /** Revision 1.1: the request's `after`, present exactly when the page was read forwards. */
  after?: bigint;
}
/** Conversation (`0x4030`, spec §11.3). */
export interface Conversation {
  conversation: ConversationInfo;
  /** Whether the conversation is encrypted end to end (spec §19.7): a flag appended to the body. */
  encrypted: boolean;
}
/** Conversations (`0x4031`, spec §11.5). */
export interface Conversations {
  conversations: ConversationSummary[];
  hasMore: boolean;
}
/** PresenceList (`0x4040`, spec §12.2). */
export interface PresenceList {
  presences: Presence[];
}
/** UploadState (`0x4060`, spec §14.4). */
export interface UploadState {
  mediaId: bigint;
  size: bigint;
  received: bigint;
}
/** MediaInfo (`0x4061`, spec §14.6). */
export interface MediaInfo {
  mediaId: bigint;
  uploader: bigint;
  size: bigint;
  mime: string;
  sha256: Uint8Array;
  createdAt: bigint;
  complete: boolean;
}
/** MediaData (`0x4062`, spec §14.8). */
export interface MediaData {
  mediaId: bigint;
  offset: bigint;
  data: Uint8Array;
}
/**
 * The calling device's keys in the directory: KeysPublished (`0x4070`, spec §19.3.1) and
 * KeyCountEvent (`0x8005`, spec §19.3.4).
 */
export interface KeyCounts {
  /** One-time keys in the directory, not yet claimed. */
  oneTimeKeysLeft: number;
  /** Whether the fallback key was handed out since it was published (or there is none). */
  fallbackKeyUsed: boolean;
}
/** DeviceKeysList (`0x4071`, spec §19.3.2). */
export interface DeviceKeysList {
  users: UserDeviceKeys[];
}
/** ClaimedKeys (`0x4072`, spec §19.3.3). */
export interface ClaimedKeys {
  keys: ClaimedKey[];
}
/** ToDeviceSent (`0x4073`, spec §19.4.1). */
export interface ToDeviceSent {
  /** The recipients for which nothing was queued: no such device, a revoked one, or a full queue. */
  undelivered: DeviceAddress[];
}
/** ToDevicePage (`0x4074`, spec §19.4.2). */
export interface ToDevicePage {
  messages: ToDeviceMessage[];
  /** Whether more follow: ask again with `since` = the last `seq` here. */
  hasMore: boolean;
  oneTimeKeysLeft: number;
  fallbackKeyUsed: boolean;
}
/** BackupPage (`0x4075`, spec §19.6). */
export interface BackupPage {
  entries: BackupEntry[];
  /** Whether more follow: ask again with `after` = the last id here. */
  hasMore: boolean;
}

/** GoAway (`0x8000`, spec §8.5). */
export interface GoAway {
  reconnectAfterMs: number;
  message: string;
}
/** UpdateEvent (`0x8001`, spec §10.10). */
export interface UpdateEvent {
  update: Update;
}
/** PresenceEvent (`0x8002`, spec §12.2). */
export interface PresenceEvent {
  presence: Presence;
}
/** TypingEvent (`0x8003`, spec §12.6). */
export interface TypingEvent {
  conversationId: bigint;
  userId: bigint;
  active: boolean;
}
/** ToDeviceEvent (`0x8004`, spec §19.4.4): a new to-device message, on a to-device live connection. */
export interface ToDeviceEvent {
  message: ToDeviceMessage;
}

/** The fields of every frame body of version 1, by the frame's name. */
export interface BodyMap {
  Hello: Hello;
  Ping: Ping;
  Register: Register;
  Login: Login;
  Resume: Resume;
  Logout: Empty;
  ListDevices: Empty;
  RevokeDevice: RevokeDevice;
  LookupUser: LookupUser;
  GetUsers: GetUsers;
  Send: Send;
  Sync: Sync;
  Ack: Ack;
  History: History;
  MarkRead: MarkRead;
  Typing: Typing;
  OpenDirect: OpenDirect;
  GetConversation: GetConversation;
  ListConversations: ListConversations;
  CreateGroup: CreateGroup;
  AddMembers: AddMembers;
  RemoveMember: RemoveMember;
  LeaveGroup: LeaveGroup;
  RenameGroup: RenameGroup;
  SetRole: SetRole;
  SubscribePresence: PresenceUsers;
  UnsubscribePresence: PresenceUsers;
  SetPrivacy: SetPrivacy;
  RegisterPushToken: RegisterPushToken;
  UnregisterPushToken: Empty;
  UploadBegin: UploadBegin;
  UploadStatus: MediaRef;
  UploadChunk: UploadChunk;
  UploadFinish: MediaRef;
  GetMedia: MediaRef;
  Download: Download;
  PublishKeys: PublishKeys;
  GetDeviceKeys: GetDeviceKeys;
  ClaimKeys: ClaimKeys;
  SendToDevice: SendToDevice;
  ToDeviceSync: ToDeviceSync;
  ToDeviceAck: ToDeviceAck;
  PutBackup: PutBackup;
  GetBackup: GetBackup;
  DeleteBackup: Empty;
  Error: ErrorBody;
  Ok: Empty;
  Welcome: Welcome;
  Pong: Pong;
  Authenticated: Authenticated;
  Devices: Devices;
  UserInfo: UserInfo;
  Users: Users;
  Sent: Sent;
  SyncPage: SyncPage;
  HistoryPage: HistoryPage;
  Conversation: Conversation;
  Conversations: Conversations;
  PresenceList: PresenceList;
  UploadState: UploadState;
  MediaInfo: MediaInfo;
  MediaData: MediaData;
  KeysPublished: KeyCounts;
  DeviceKeysList: DeviceKeysList;
  ClaimedKeys: ClaimedKeys;
  ToDeviceSent: ToDeviceSent;
  ToDevicePage: ToDevicePage;
  BackupPage: BackupPage;
  GoAway: GoAway;
  UpdateEvent: UpdateEvent;
  PresenceEvent: PresenceEvent;
  TypingEvent: TypingEvent;
  ToDeviceEvent: ToDeviceEvent;
  KeyCountEvent: KeyCounts;
}

/** The name of a frame type of version 1. */
export type FrameName = keyof BodyMap;

/** The body of a frame of type `K`, tagged by its name. */
export type BodyOf<K extends FrameName> = { type: K } & BodyMap[K];

/** Any frame body of version 1, tagged by `type`. */
export type Body = { [K in FrameName]: BodyOf<K> }[FrameName];

/** One frame: a request id and a body (spec §2.2). The frame type follows from the body. */
export interface Frame<B extends Body = Body> {
  requestId: number;
  body: B;
}

const empty = struct<Empty>({});
const presenceUsers = struct<PresenceUsers>({ users: list(u64, PRESENCE_USERS_MAX) });
const mediaRef = struct<MediaRef>({ mediaId: u64 });
const keyCounts = struct<KeyCounts>({ oneTimeKeysLeft: u32, fallbackKeyUsed: bool });
const credentials = struct<Register>({
  username: str(USERNAME_BYTES_MAX),
  password: str(PASSWORD_BYTES_MAX),
  deviceName: str(DEVICE_NAME_BYTES_MAX),
});

/** Each frame's type number and body codec (spec §7). */
export const FRAME_TYPES: { readonly [K in FrameName]: readonly [number, Codec<BodyMap[K]>] } = {
  Hello: [
    0x0001,
    struct<Hello>({ minVersion: u16, maxVersion: u16, clientName: str(SOFTWARE_NAME_BYTES_MAX) }),
  ],
  Ping: [0x0002, struct<Ping>({ nonce: u64 })],
  Register: [0x0010, credentials],
  Login: [0x0011, credentials],
  Resume: [0x0012, struct<Resume>({ token: fixed(TOKEN_BYTES) })],
  Logout: [0x0013, empty],
  ListDevices: [0x0014, empty],
  RevokeDevice: [0x0015, struct<RevokeDevice>({ deviceId: u32 })],
  LookupUser: [0x0016, struct<LookupUser>({ username: str(USERNAME_BYTES_MAX) })],
  GetUsers: [0x0017, struct<GetUsers>({ userIds: list(u64, USERS_PER_REQUEST_MAX) })],
  Send: [
    0x0020,
    struct<Send>({
      conversationId: u64,
      clientMsgId: fixed(CLIENT_MSG_ID_BYTES),
      body: text(BODY_CHARS_MAX),
      attachments: list(u64, ATTACHMENTS_PER_MESSAGE_MAX),
    }),
  ],
  Sync: [0x0021, struct<Sync>({ since: u64, limit: u32 })],
  Ack: [0x0022, struct<Ack>({ upTo: u64 })],
  History: [0x0023, struct<History>({ conversationId: u64, before: u64, limit: u32, after: appendedOption(u64) })],
  MarkRead: [0x0024, struct<MarkRead>({ conversationId: u64, upToSeq: u64 })],
  Typing: [0x0025, struct<Typing>({ conversationId: u64, active: bool })],
  OpenDirect: [0x0030, struct<OpenDirect>({ userId: u64, encrypted: tailFlag })],
  GetConversation: [0x0031, struct<GetConversation>({ conversationId: u64 })],
  ListConversations: [0x0032, struct<ListConversations>({ after: u64, limit: u32 })],
  CreateGroup: [
    0x0033,
    struct<CreateGroup>({ name: str(GROUP_NAME_BYTES_MAX), members: list(u64, GROUP_MEMBERS_MAX), encrypted: tailFlag }),
  ],
  AddMembers: [0x0034, struct<AddMembers>({ conversationId: u64, members: list(u64, GROUP_MEMBERS_MAX) })],
  RemoveMember: [0x0035, struct<RemoveMember>({ conversationId: u64, userId: u64 })],
  LeaveGroup: [0x0036, struct<LeaveGroup>({ conversationId: u64 })],
  RenameGroup: [0x0037, struct<RenameGroup>({ conversationId: u64, name: str(GROUP_NAME_BYTES_MAX) })],
  SetRole: [0x0038, struct<SetRole>({ conversationId: u64, userId: u64, role })],
  SubscribePresence: [0x0040, presenceUsers],
  UnsubscribePresence: [0x0041, presenceUsers],
  SetPrivacy: [0x0042, struct<SetPrivacy>({ hideLastSeen: bool })],
  RegisterPushToken: [
    0x0050,
    struct<RegisterPushToken>({
      platform: pushPlatform,
      appId: str(PUSH_APP_ID_BYTES_MAX),
      token: str(PUSH_TOKEN_BYTES_MAX),
    }),
  ],
  UnregisterPushToken: [0x0051, empty],
  UploadBegin: [
    0x0060,
    struct<UploadBegin>({ size: u64, mime: str(MIME_BYTES_MAX), sha256: fixed(SHA256_BYTES) }),
  ],
  UploadStatus: [0x0061, mediaRef],
  UploadChunk: [
    0x0062,
    struct<UploadChunk>({ mediaId: u64, offset: u64, data: bytes(MEDIA_CHUNK_BYTES_MAX) }),
  ],
  UploadFinish: [0x0063, mediaRef],
  GetMedia: [0x0064, mediaRef],
  Download: [0x0065, struct<Download>({ mediaId: u64, offset: u64, length: u32 })],
  PublishKeys: [
    0x0070,
    struct<PublishKeys>({
      identity: option(deviceKeys),
      oneTimeKeys: list(signedKey, ONE_TIME_KEYS_PER_DEVICE_MAX),
      fallbackKey: option(signedKey),
    }),
  ],
  GetDeviceKeys: [0x0071, struct<GetDeviceKeys>({ userIds: list(u64, KEY_QUERY_USERS_MAX) })],
  ClaimKeys: [0x0072, struct<ClaimKeys>({ devices: list(deviceAddress, KEY_CLAIMS_MAX) })],
  SendToDevice: [
    0x0073,
    struct<SendToDevice>({ messages: list(toDeviceOut, TO_DEVICE_MESSAGES_PER_REQUEST_MAX) }),
  ],
  ToDeviceSync: [0x0074, struct<ToDeviceSync>({ since: u64, limit: u32 })],
  ToDeviceAck: [0x0075, struct<ToDeviceAck>({ upTo: u64 })],
  PutBackup: [0x0076, struct<PutBackup>({ entries: list(backupEntry, BACKUP_ENTRIES_PER_REQUEST_MAX) })],
  GetBackup: [0x0077, struct<GetBackup>({ after: fixed(BACKUP_ENTRY_ID_BYTES), limit: u32 })],
  DeleteBackup: [0x0078, empty],

  Error: [
    0x4000,
    struct<ErrorBody>({ code: u16, retryAfterMs: u32, message: str(ERROR_MESSAGE_BYTES_MAX) }),
  ],
  Ok: [0x4001, empty],
  Welcome: [
    0x4002,
    struct<Welcome>({
      version: u16,
      serverName: str(SOFTWARE_NAME_BYTES_MAX),
      serverTimeMs: u64,
      limits: serverLimits,
    }),
  ],
  Pong: [0x4003, struct<Pong>({ nonce: u64 })],
  Authenticated: [
    0x4010,
    struct<Authenticated>({
      userId: u64,
      deviceId: u32,
      username: str(USERNAME_BYTES_MAX),
      token: option(fixed(TOKEN_BYTES)),
    }),
  ],
  Devices: [0x4011, struct<Devices>({ devices: list(deviceInfo, DEVICES_PER_USER_MAX) })],
  UserInfo: [0x4012, userInfo],
  Users: [0x4013, struct<Users>({ users: list(userInfo, USERS_PER_REQUEST_MAX) })],
  Sent: [
    0x4020,
    struct<Sent>({ conversationId: u64, clientMsgId: fixed(CLIENT_MSG_ID_BYTES), seq: u64, messageId: u64, ts: u64 }),
  ],
  SyncPage: [
    0x4021,
    struct<SyncPage>({ updates: list(update, SYNC_PAGE_UPDATES_MAX), hasMore: bool, head: u64 }),
  ],
  HistoryPage: [
    0x4022,
    struct<HistoryPage>({
      conversationId: u64,
      messages: list(message, HISTORY_PAGE_MESSAGES_MAX),
      hasMore: bool,
      after: appendedOption(u64),
    }),
  ],
  Conversation: [0x4030, struct<Conversation>({ conversation: conversationInfo, encrypted: tailFlag })],
  Conversations: [
    0x4031,
    struct<Conversations>({ conversations: list(conversationSummary, CONVERSATIONS_PAGE_MAX), hasMore: bool }),
  ],
  PresenceList: [0x4040, struct<PresenceList>({ presences: list(presence, PRESENCE_USERS_MAX) })],
  UploadState: [0x4060, struct<UploadState>({ mediaId: u64, size: u64, received: u64 })],
  MediaInfo: [
    0x4061,
    struct<MediaInfo>({
      mediaId: u64,
      uploader: u64,
      size: u64,
      mime: str(MIME_BYTES_MAX),
      sha256: fixed(SHA256_BYTES),
      createdAt: u64,
      complete: bool,
    }),
  ],
  MediaData: [0x4062, struct<MediaData>({ mediaId: u64, offset: u64, data: bytes(MEDIA_CHUNK_BYTES_MAX) })],
  KeysPublished: [0x4070, keyCounts],
  DeviceKeysList: [0x4071, struct<DeviceKeysList>({ users: list(userDeviceKeys, KEY_QUERY_USERS_MAX) })],
  ClaimedKeys: [0x4072, struct<ClaimedKeys>({ keys: list(claimedKey, KEY_CLAIMS_MAX) })],
  ToDeviceSent: [
    0x4073,
    struct<ToDeviceSent>({ undelivered: list(deviceAddress, TO_DEVICE_MESSAGES_PER_REQUEST_MAX) }),
  ],
  ToDevicePage: [
    0x4074,
    struct<ToDevicePage>({
      messages: list(toDeviceMessage, TO_DEVICE_PAGE_MESSAGES_MAX),
      hasMore: bool,
      oneTimeKeysLeft: u32,
      fallbackKeyUsed: bool,
    }),
  ],
  BackupPage: [
    0x4075,
    struct<BackupPage>({ entries: list(backupEntry, BACKUP_ENTRIES_PER_REQUEST_MAX), hasMore: bool }),
  ],

  GoAway: [0x8000, struct<GoAway>({ reconnectAfterMs: u32, message: str(ERROR_MESSAGE_BYTES_MAX) })],
  UpdateEvent: [0x8001, struct<UpdateEvent>({ update })],
  PresenceEvent: [0x8002, struct<PresenceEvent>({ presence })],
  TypingEvent: [0x8003, struct<TypingEvent>({ conversationId: u64, userId: u64, active: bool })],
  ToDeviceEvent: [0x8004, struct<ToDeviceEvent>({ message: toDeviceMessage })],
  KeyCountEvent: [0x8005, keyCounts],
};

/** Frame names by type number. */
export const FRAME_NAMES: ReadonlyMap<number, FrameName> = new Map(
  (Object.entries(FRAME_TYPES) as [FrameName, readonly [number, unknown]][]).map(([name, [code]]) => [code, name]),
);

/** The type number of a frame name. */
export function frameType(name: FrameName): number {
  return FRAME_TYPES[name][0];
}

/** Whether a type number is a request (client to server), `0x0001`–`0x3FFF` (spec §2.3). */
export function isRequestType(type: number): boolean {
  return type >= 0x0001 && type <= 0x3fff;
}

/** Whether a type number is a reply, `0x4000`–`0x7FFF` (spec §2.3). */
export function isReplyType(type: number): boolean {
  return type >= 0x4000 && type <= 0x7fff;
}

/** Whether a type number is an event, `0x8000`–`0xFFFF` (spec §2.3). */
export function isEventType(type: number): boolean {
  return type >= 0x8000 && type <= 0xffff;
}
