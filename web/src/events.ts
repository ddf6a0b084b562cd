/** Message and REST types of the realtime service (SPEC §4 and §7). */

export type UserId = number | string;
export type TaskType = "daily" | "weekly" | "monthly" | "ad-hoc";
export type ResultStatus = "completed" | "failed" | "skipped";
export type TaskStatus = "pending" | ResultStatus;
export type TransportName = "websocket" | "sse";

export const TASK_TYPES: readonly TaskType[] = ["daily", "weekly", "monthly", "ad-hoc"];
export const RESULT_STATUSES: readonly ResultStatus[] = ["completed", "failed", "skipped"];

/** What every event carries: an opaque ordered `id` (resume position) and the time. */
interface Envelope {
  id: string;
  ts: string;
}

/** Fields of events caused by a user's action. */
interface Actor {
  userId: UserId;
  userName: string;
}

export interface TaskCreatedEvent extends Envelope, Actor {
  type: "task_created";
  taskId: number;
  taskType: TaskType;
  title: string;
  scheduleId?: number | null;
}

export interface TaskExecutedEvent extends Envelope, Actor {
  type: "task_executed";
  taskId: number;
  taskType: TaskType;
  resultStatus: ResultStatus;
  note?: string;
  /** The task's count after this run, when the service includes it (makes replays idempotent). */
  executions?: number;
}

export interface TaskUpdatedEvent extends Envelope, Actor {
  type: "task_updated";
  taskId: number;
  title?: string;
  taskType?: TaskType;
  status?: TaskStatus;
  scheduleId?: number | null;
}

export interface TaskDeletedEvent extends Envelope, Actor {
  type: "task_deleted";
  taskId: number;
}

export interface ScheduleUpdatedEvent extends Envelope, Actor {
  type: "schedule_updated";
  scheduleId: number;
  action: "created" | "updated" | "deleted";
  name?: string;
}

/** A user's first connection anywhere in the fleet (not sent again for a reconnect within the grace). */
export interface PresenceJoinedEvent extends Envelope, Actor {
  type: "presence_joined";
}

/** A user's last connection anywhere is gone and the grace ran out (or their replica died). */
export interface PresenceLeftEvent extends Envelope, Actor {
  type: "presence_left";
}

/** One entry of `GET /api/presence`. */
export interface PresentUser {
  userId: UserId;
  userName: string;
  /** When they joined (ISO-8601 UTC). */
  since: string | null;
  /** Open connections per transport on every replica; all 0 while within the grace. */
  connections: Partial<Record<TransportName, number>> & Record<string, number>;
}

export interface ConnectedMessage {
  type: "connected";
  id?: string;
  ts?: string;
  connectionId: string;
  userId: UserId;
  userName: string;
  transport: TransportName;
  serverTime: string;
  heartbeatSeconds: number;
  resumed: boolean;
}

export interface PongMessage {
  type: "pong";
  id?: string;
  ts: string;
  nonce?: string | number;
}

export interface ResyncMessage {
  type: "resync";
  id?: string;
  ts?: string;
  reason: string;
}

export interface TokenExpiringMessage {
  type: "token_expiring";
  id?: string;
  ts?: string;
  expiresAt: string | number;
}

export interface AuthOkMessage {
  type: "auth_ok";
  id?: string;
  ts?: string;
  expiresAt: string | number;
}

export interface ErrorMessage {
  type: "error";
  id?: string;
  ts?: string;
  code: "bad_message" | "unknown_type" | "forbidden" | "too_large" | (string & {});
  message: string;
}

/** Any other event type, e.g. published through `POST /api/events`. */
export interface CustomEvent {
  type: string;
  id?: string;
  ts?: string;
  [field: string]: unknown;
}

/** Every message type the service defines, keyed by `type`. */
export interface EventMap {
  task_created: TaskCreatedEvent;
  task_executed: TaskExecutedEvent;
  task_updated: TaskUpdatedEvent;
  task_deleted: TaskDeletedEvent;
  schedule_updated: ScheduleUpdatedEvent;
  presence_joined: PresenceJoinedEvent;
  presence_left: PresenceLeftEvent;
  connected: ConnectedMessage;
  pong: PongMessage;
  resync: ResyncMessage;
  token_expiring: TokenExpiringMessage;
  auth_ok: AuthOkMessage;
  error: ErrorMessage;
}

export type KnownEvent = EventMap[keyof EventMap];
export type TaskEvent = TaskCreatedEvent | TaskExecutedEvent | TaskUpdatedEvent | TaskDeletedEvent;
export type AppEvent = TaskEvent | ScheduleUpdatedEvent;
export type PresenceEvent = PresenceJoinedEvent | PresenceLeftEvent;
/** What listeners receive: a known message or a custom event. */
export type RealtimeEvent = KnownEvent | CustomEvent;

export const APP_EVENT_TYPES = [
  "task_created",
  "task_executed",
  "task_updated",
  "task_deleted",
  "schedule_updated",
] as const satisfies readonly AppEvent["type"][];

/** Who came and went (`usePresence` subscribes to these). */
export const PRESENCE_EVENT_TYPES = ["presence_joined", "presence_left"] as const satisfies readonly PresenceEvent["type"][];

/** Messages about the connection itself, not application events. */
const CONTROL_MESSAGE_TYPES = [
  "connected",
  "pong",
  "resync",
  "token_expiring",
  "auth_ok",
  "error",
] as const satisfies readonly (keyof EventMap)[];

/** Every type with a typed payload in `EventMap`. */
export const KNOWN_TYPES: readonly (keyof EventMap)[] = [
  ...APP_EVENT_TYPES,
  ...PRESENCE_EVENT_TYPES,
  ...CONTROL_MESSAGE_TYPES,
];

/** Per-connection messages: their ids (if any) are not stream positions, never resume from them. */
export const CONTROL_TYPES: ReadonlySet<string> = new Set([...CONTROL_MESSAGE_TYPES, "close"]);

/** Narrow a message to one known type. */
export function isEvent<K extends keyof EventMap>(event: RealtimeEvent, type: K): event is EventMap[K] {
  return event.type === type;
}

export interface Task {
  id: number;
  title: string;
  taskType: TaskType;
  status: TaskStatus;
  scheduleId: number | null;
  userId: UserId;
  userName: string;
  createdAt: string;
  updatedAt: string;
  executions: number;
  lastResultStatus: ResultStatus | null;
}

export interface Schedule {
  id: number;
  name: string;
  cron: string;
  taskType: TaskType;
  enabled: boolean;
  createdAt: string;
  updatedAt: string;
}
