/**
 * Message and REST types of the realtime service. Every shape and event-type list is generated
 * from the service's schema (`generated/schema.ts`, by `python -m service.codegen`) and exported
 * from here; this module adds the unions and runtime helpers the client uses. docs/protocol.md
 * describes every message.
 */

import { CONTROL_MESSAGE_TYPES, EVENT_TYPES, type EventMap } from "./generated/schema";
import type { TaskCreatedEvent, TaskDeletedEvent, TaskExecutedEvent, TaskUpdatedEvent } from "./generated/schema";

export * from "./generated/schema";

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
export const KNOWN_TYPES: readonly (keyof EventMap)[] = [...EVENT_TYPES, ...CONTROL_MESSAGE_TYPES];

/** Per-connection messages: their ids (if any) are not stream positions, never resume from them. */
export const CONTROL_TYPES: ReadonlySet<string> = new Set(CONTROL_MESSAGE_TYPES);

/** Narrow a message to one known type. */
export function isEvent<K extends keyof EventMap>(event: RealtimeEvent, type: K): event is EventMap[K] {
  return event.type === type;
}
