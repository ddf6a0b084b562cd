/**
 * Message and REST types of the realtime service. The shapes are generated from the service's
 * schema (`generated/schema.ts`, by `python -m service.schema`); this module adds the unions
 * and the runtime helpers the client uses. docs/protocol.md describes every message.
 */

import { APP_EVENT_TYPES, CONTROL_MESSAGE_TYPES, type EventMap } from "./generated/schema";
import type {
  TaskCreatedEvent,
  TaskDeletedEvent,
  TaskExecutedEvent,
  TaskUpdatedEvent,
} from "./generated/schema";

export type {
  AppEvent,
  AuthOkMessage,
  AuthRequest,
  ClientMessage,
  ClientMessageMap,
  CloseMessage,
  ConnectedMessage,
  ErrorMessage,
  EventMap,
  PingRequest,
  PongMessage,
  ResultStatus,
  ResyncMessage,
  Schedule,
  ScheduleUpdatedEvent,
  SubscribeRequest,
  Task,
  TaskCreatedEvent,
  TaskDeletedEvent,
  TaskExecutedEvent,
  TaskStatus,
  TaskType,
  TaskUpdatedEvent,
  TokenExpiringMessage,
  TransportName,
  UnsubscribeRequest,
  UserId,
} from "./generated/schema";
export { APP_EVENT_TYPES, RESULT_STATUSES, TASK_STATUSES, TASK_TYPES, TRANSPORTS } from "./generated/schema";

/** Any other event type, e.g. published through `POST /api/events`. */
export interface CustomEvent {
  type: string;
  id?: string;
  ts?: string;
  [field: string]: unknown;
}

export type KnownEvent = EventMap[keyof EventMap];
export type TaskEvent = TaskCreatedEvent | TaskExecutedEvent | TaskUpdatedEvent | TaskDeletedEvent;
/** What listeners receive: a known message or a custom event. */
export type RealtimeEvent = KnownEvent | CustomEvent;

/** Every type with a typed payload in `EventMap`. */
export const KNOWN_TYPES: readonly (keyof EventMap)[] = [...APP_EVENT_TYPES, ...CONTROL_MESSAGE_TYPES];

/** Per-connection messages: their ids (if any) are not stream positions, never resume from them. */
export const CONTROL_TYPES: ReadonlySet<string> = new Set(CONTROL_MESSAGE_TYPES);

/** Narrow a message to one known type. */
export function isEvent<K extends keyof EventMap>(event: RealtimeEvent, type: K): event is EventMap[K] {
  return event.type === type;
}
